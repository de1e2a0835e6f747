"""
A run's files, where they live and how they are written: <out_dir>/<task>_<model>_s<seed>/
holds train.log, ckpt.pt and, once the run has ended, record.json. Files are written
whole or not at all, so that a kill at any instant leaves the old file or the new one,
and any number of processes can write into one out_dir. No torch here: the report reads
records without it.
"""

import glob
import json
import os
import tempfile

RECORD_KEYS = {"task", "name", "model", "seed", "status", "config"}


class UserError(Exception):
    """Bad input: reported as one line, never a traceback."""


def run_name(task, model, seed):
    return f"{task}_{model}_s{seed}"


UMASK = os.umask(0)
os.umask(UMASK)  # (read without changing it)


def atomic_write(path, write):
    """Into a temporary file of its own (concurrent writers never share one), then renamed over path."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # as open() would make it (mkstemp's 0600 would hide records from others)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def read_json(path, keys, what):
    """The dict in path (None if there is no such file), which must hold keys."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            r = json.load(f)
        assert isinstance(r, dict) and keys <= r.keys()
    except (ValueError, AssertionError, OSError):
        raise UserError(f"{path} is not a {what}; move it away (it is left as it is)") from None
    return r


def read_record(path):
    return read_json(path, RECORD_KEYS, "run record")


def read_records(out_dir):
    """{run directory, relative to out_dir: record} for every record under out_dir (a run's
    directory is its run name; an experiment may keep grids in folders of its own below)."""
    paths = sorted(glob.glob(os.path.join(out_dir, "**", "record.json"), recursive=True))
    return {os.path.relpath(os.path.dirname(p), out_dir): read_record(p) for p in paths}


def read_test_budgets(out_dir):
    """The test-budget evaluations in out_dir (<run>/test_budgets.json, see evaluate.py)."""
    paths = sorted(glob.glob(os.path.join(out_dir, "**", "test_budgets.json"), recursive=True))
    return [read_json(p, {"task", "name", "seed", "train_budget", "budgets"}, "test-budget record") for p in paths]
