"""
A run's files, where they live and how they are written: <out_dir>/<task>_<model>_s<seed>/
holds train.log, ckpt.pt and, once the run has ended, record.json. Files are written
whole or not at all, so that a kill at any instant leaves the old file or the new one,
and any number of processes can write into one out_dir. No torch here: the report reads
records without it.
"""

import contextlib
import glob
import json
import os
import subprocess
import sys
import tempfile

RECORD_KEYS = {"task", "name", "model", "seed", "status", "config"}
HERE = os.path.dirname(os.path.abspath(__file__))


class UserError(Exception):
    """Bad input: reported as one line, never a traceback."""


def run_name(task, model, seed):
    return f"{task}_{model}_s{seed}"


UMASK = os.umask(0)
os.umask(UMASK)  # (read without changing it)


def atomic_write(path, write):
    """Into a temporary file of its own (concurrent writers never share one), then renamed
    over path."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                               prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        # as open() would make it (mkstemp's 0600 would hide records from others)
        os.fchmod(fd, 0o666 & ~UMASK)
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
    return [read_json(p, {"task", "name", "seed", "train_budget", "budgets"}, "test-budget record")
            for p in paths]


# -----------------------------------------------------------------------------
# What a run says of itself: its log, the code it ran, its line of key numbers.

class Tee:
    """Output to the console and to the run's train.log at once (line by line: tail -f works)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        return [s.write(text) for s in self.streams][0]

    def flush(self):
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def logged_to(path):
    """Within it, what is printed goes to the console and to the log file at path too."""
    with open(path, "a", buffering=1) as log, \
            contextlib.redirect_stdout(Tee(sys.stdout, log)), \
            contextlib.redirect_stderr(Tee(sys.stderr, log)):
        yield


def code_version():
    """The git commit of this code, '+dirty' if its Python files have uncommitted changes."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True,
                              timeout=10).stdout
    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "*.py").strip()
        commit = git("rev-parse", "--short", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def by_part(parts):
    """{"code": the first part's, "code_resumed": the later parts' where any differ}, and the
    same for each key of a run's parts ({"code": [...], "threads": [...]}, one per part)."""
    out = {}
    for key, values in parts.items():
        out[key] = values[0]
        if len(set(values)) > 1:
            out[f"{key}_resumed"] = values[1:]
    return out


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def describe(config, stats, T):
    """A run's first line: what its compute is."""
    return (f"{stats['params']:,} params | {config.n_steps} steps x {config.passes_per_step} = "
            f"{stats['block_passes']} block passes/token, {stats['grad_block_passes']} with "
            f"gradient | {stats['train_flops_per_token'] / 1e6:.1f} MFLOP/token to train (T={T})")


def summary(record):
    """One line of a finished run's key numbers."""
    name = run_name(record["task"], record["name"], record["seed"])
    if record["status"] != "ok":
        return f"{name} FAILED: {record.get('error', '')}"
    L = str(record["n_digits"])
    ev = record["eval"].get(L, {"char_acc": float("nan"), "seq_acc": float("nan")})
    return (f"{name}: char_acc {ev['char_acc']:.3f} seq_acc {ev['seq_acc']:.3f} at L={L} | loss "
            f"{record['final_loss']:.3f} | passes {record['executed_block_passes_train']:.1f}/"
            f"{record['block_passes']} | {fmt_time(record['wall_s'])}")
