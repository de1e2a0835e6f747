"""Tests of one run (train.py): its record and checkpoint, exact resume after a kill, Ctrl-C
or SIGTERM, the record policy, and every bad input refused in one line before any work."""

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import artrm
import flags
import machine
import records
import stopping
import train
from artrm import Config

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = ["--n_embd", "16", "--n_head", "2", "--budget", "6", "--n_digits", "3",
        "--eval_lengths", "3,4", "--eval_examples", "8", "--batch_size", "8", "--block_size", "24",
        "--log_interval", "5", "--eval_interval", "5", "--device", "cpu"]
# How long a process the tests start may take to end by itself: only a real hang takes this
# long, however busy the machine (a run of these tests' sizes takes seconds when idle).
HANG = 1800  # seconds


def parse(argv):
    """What train.py makes of these flags."""
    return flags.parse_args(argv, train.SETTINGS, train.PRESETS, train.__doc__)


def run(out_dir, *extra):
    return train.main(TINY + ["--out_dir", str(out_dir)] + list(extra))


def record(out_dir, name):
    return json.loads((out_dir / name / "record.json").read_text())


def cli(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=HERE, capture_output=True,
                          text=True, timeout=HANG)


def test_a_run_writes_its_record_log_and_checkpoint(tmp_path, capsys):
    assert run(tmp_path, "--model", "ut", "--task", "addition", "--max_iters", "6") == 0
    rec = record(tmp_path, "addition_ut_s1337")
    for key in ("model", "task", "seed", "budget", "n_digits", "iters", "params", "block_passes",
                "grad_block_passes", "train_flops_per_token", "wall_s", "final_loss", "eval",
                "executed_block_passes_train", "executed_block_passes_eval",
                "executed_train_flops_per_token"):
        assert key in rec, key
    assert (rec["model"], rec["task"], rec["iters"], rec["budget"]) == ("ut", "addition", 6, 6)
    assert set(rec["eval"]) == {"3", "4"}
    assert len(rec["eval"]["4"]["pos_acc"]) == 5  # L+1 answer digits
    assert 1 <= rec["executed_block_passes_train"] <= 6
    assert 1 <= rec["executed_block_passes_eval"] <= 6
    assert 0 <= rec["early_exit_fraction_train"] <= 1 and 0 <= rec["early_exit_fraction_eval"] <= 1
    assert rec["executed_train_flops_per_token"] <= rec["train_flops_per_token"]
    # a batch runs until its last position halts: at least the mean, at most the budget
    assert rec["executed_block_passes_train"] <= rec["spent_block_passes_train"] <= 6
    assert rec["executed_block_passes_eval"] <= rec["spent_block_passes_eval"] <= 6
    spent = rec["spent_train_flops_per_token"]
    assert rec["executed_train_flops_per_token"] <= spent <= rec["train_flops_per_token"]
    assert rec["config"]["max_iters"] == 6
    assert "out_dir" not in rec["config"] and "model" not in rec["config"]
    ckpt = torch.load(tmp_path / "addition_ut_s1337" / "ckpt.pt", weights_only=True)
    assert ckpt["iter"] == 6 and Config(**ckpt["config"]).model == "ut"
    out = capsys.readouterr().out
    assert "tok/s" in out and "eta" in out and "block passes/token" in out and "passes " in out
    # every length
    assert re.search(r"final evaluation: L=3 char_acc [0-9.]+ seq_acc [0-9.]+ \| L=4 char_acc", out)
    log = (tmp_path / "addition_ut_s1337" / "train.log").read_text()
    # the console's lines, kept
    assert "iter 00005/00006" in log and "addition_ut_s1337: char_acc" in log
    assert not (tmp_path / "results.json").exists()  # views are the lab's (report.py)


def test_help_lists_every_knob_with_its_default_once(capsys):
    with pytest.raises(SystemExit):
        train.main(["-h"])
    out = " ".join(capsys.readouterr().out.split())
    for k in train.SETTINGS:
        assert f"--{k}" in out, k
    assert out.count("(default:") == len(train.SETTINGS) + 1  # + --preset
    assert "(default: ) (default" not in out
    assert "--n_head INT attention heads" in out and "python grid.py -h" in out


def test_presets_resolve_and_explicit_flags_override_them():
    paper = parse(["--preset", "paper", "--model", "dense", "--task", "addition"])
    flags.validate(paper)  # L=50 addition fits block_size 180
    assert (paper.budget, paper.n_embd, paper.n_head, paper.dropout, paper.lr, paper.max_iters) == \
        (24, 384, 6, 0.1, 3e-4, 5000)
    assert paper.eval_lengths == [10, 20, 30, 40, 50]
    assert not paper.decay_lr and paper.temperature == 0.0
    mine = parse(["--preset", "paper", "--max_iters", "10", "--temperature", "1"])
    assert mine.max_iters == 10 and mine.temperature == 1.0 and mine.n_embd == 384
    assert parse([]).n_embd == train.DEFAULTS["n_embd"]


def test_nan_stops_the_run_naming_the_iteration_and_keeps_the_last_checkpoint(
        tmp_path, monkeypatch, capsys):
    real, calls = artrm.cross_entropy, [0]

    def poisoned(logits, targets):
        calls[0] += 1
        loss = real(logits, targets)
        return loss * float("nan") if calls[0] == 8 else loss

    monkeypatch.setattr(artrm, "cross_entropy", poisoned)
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "20",
               "--ckpt_interval", "5") == 1
    assert "loss is nan at iter 7" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "copy_iter_s1337" / "ckpt.pt", weights_only=True)
    assert ckpt["iter"] == 5  # the last good one, untouched
    rec = record(tmp_path, "copy_iter_s1337")
    assert rec["status"] == "failed" and "nan at iter 7" in rec["error"]

# -----------------------------------------------------------------------------
# Interrupted runs resume exactly: killed, Ctrl-C, SIGTERM (a scheduler's time limit)


RESUME_FLAGS = TINY + ["--model", "ar_trm", "--task", "copy", "--max_iters", "150",
                      "--dropout", "0.1", "--ckpt_interval", "10", "--eval_interval", "100"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("once")
    assert cli(*RESUME_FLAGS, "--out_dir", str(out)).returncode == 0
    return record(out, "copy_ar_trm_s1337")


def assert_same_run(a, b):
    assert a["final_loss"] == b["final_loss"]
    assert a["eval"] == b["eval"]
    assert a["history"] == b["history"]


def test_killed_then_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, uninterrupted):
    proc = subprocess.Popen([sys.executable, "train.py", *RESUME_FLAGS, "--out_dir", str(tmp_path)],
                            cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "copy_ar_trm_s1337" / "ckpt.pt"
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = torch.load(ckpt, weights_only=True)["iter"]
    assert at < 150, "the run ended before it could be killed"
    assert cli(*RESUME_FLAGS, "--out_dir", str(tmp_path), "--resume").returncode == 0
    assert_same_run(uninterrupted, record(tmp_path, "copy_ar_trm_s1337"))


def test_signal_handlers_are_put_back_after_a_run_even_when_it_fails():
    before = [signal.getsignal(s) for s in stopping.SIGNALS]
    stop = stopping.StopOnSignal()
    with pytest.raises(ZeroDivisionError):
        with stopping.handling(stop.on_signal):
            os.kill(os.getpid(), signal.SIGTERM)  # taken between iterations: no exception here
            os.kill(os.getpid(), signal.SIGTERM)  # a copy of the first, not a second signal
            1 / 0
    assert stop.asked == "SIGTERM"
    assert [signal.getsignal(s) for s in stopping.SIGNALS] == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_that_resumes_exactly(tmp_path, uninterrupted, sig):
    proc = subprocess.Popen([sys.executable, "train.py", *RESUME_FLAGS, "--out_dir", str(tmp_path)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("iter 00010"):
            break
    t = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 130
    assert time.time() - t < 30  # inside a scheduler's 30 s grace, however busy the machine
    assert "--resume" in err and "Traceback" not in err and sig.name in err
    log = (tmp_path / "copy_ar_trm_s1337" / "train.log").read_text()
    assert f"interrupted ({sig.name})" in log  # the run's log says so too
    at = torch.load(tmp_path / "copy_ar_trm_s1337" / "ckpt.pt", weights_only=True)["iter"]
    assert 10 <= at < 150
    assert cli(*RESUME_FLAGS, "--out_dir", str(tmp_path), "--resume").returncode == 0
    assert_same_run(uninterrupted, record(tmp_path, "copy_ar_trm_s1337"))


def test_ctrl_c_in_the_final_evaluation_is_one_line_and_the_checkpoint_stays(
        tmp_path, monkeypatch, capsys):
    real = train.evaluate

    def interrupted_at_the_end(model, task, lengths, *a, **k):
        if lengths == [3, 4]:  # the final evaluation (training evaluates at L=3 only)
            raise KeyboardInterrupt
        return real(model, task, lengths, *a, **k)

    monkeypatch.setattr(train, "evaluate", interrupted_at_the_end)
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "5") == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "final evaluation" in err and "--resume" in err
    assert torch.load(tmp_path / "copy_iter_s1337" / "ckpt.pt", weights_only=True)["iter"] == 5
    assert not (tmp_path / "copy_iter_s1337" / "record.json").exists()


def test_atomic_checkpoint_write_keeps_the_old_one_when_the_writer_dies(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    records.atomic_write(path, lambda f: torch.save({"iter": 1}, f))

    def dies_mid_save(f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("killed mid-save")

    with pytest.raises(OSError):
        records.atomic_write(path, dies_mid_save)
    assert torch.load(path, weights_only=True)["iter"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # and the half-written temporary file is gone

# -----------------------------------------------------------------------------
# The record policy: the same command skips, a changed one is refused, --resume may extend


def test_the_same_command_again_skips_the_finished_run_and_keeps_its_record(tmp_path, capsys):
    one = ["--model", "dense", "--task", "copy", "--max_iters", "2"]
    assert run(tmp_path, *one) == 0
    first = (tmp_path / "copy_dense_s1337" / "record.json").read_bytes()
    assert run(tmp_path, *one) == 0
    assert "is finished in" in capsys.readouterr().out
    assert (tmp_path / "copy_dense_s1337" / "record.json").read_bytes() == first
    # a record from before a knob existed: its default
    path = tmp_path / "copy_dense_s1337" / "record.json"
    rec = json.loads(path.read_text())
    del rec["config"]["halt_explore"]
    path.write_text(json.dumps(rec))
    assert run(tmp_path, *one) == 0 and "is finished in" in capsys.readouterr().out


def test_resume_may_extend_a_run_and_the_record_says_so(tmp_path):
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "2") == 0
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "4", "--resume") == 0
    rec = record(tmp_path, "copy_iter_s1337")
    assert rec["iters"] == 4 and rec["config"]["max_iters"] == 4
    assert rec["resumed"] == [{"iter": 2, "changed": {"max_iters": [2, 4]}}]


def test_a_resumed_run_estimates_its_eta_from_its_own_pace(tmp_path, capsys):
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "5") == 0
    ckpt_path = tmp_path / "copy_iter_s1337" / "ckpt.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["wall_s"] = 1e6  # as if the first part ran on a far slower machine
    torch.save(ckpt, ckpt_path)
    capsys.readouterr()
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "15",
               "--resume") == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("iter 00010"))
    assert "h" not in line.split("eta ")[1], line  # 5 iterations at this part's pace: seconds


def test_a_checkpoint_from_before_the_batch_steps_were_counted_resumes_and_says_so(tmp_path):
    assert run(tmp_path, "--model", "ut", "--task", "copy", "--max_iters", "2") == 0
    ckpt_path = tmp_path / "copy_ut_s1337" / "ckpt.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["passes"] = {k: v[:3] for k, v in ckpt["passes"].items()}  # as older code saved them
    torch.save(ckpt, ckpt_path)
    assert run(tmp_path, "--model", "ut", "--task", "copy", "--max_iters", "4", "--resume") == 0
    rec = record(tmp_path, "copy_ut_s1337")
    assert rec["spent_block_passes_train"] is None and rec["spent_train_flops_per_token"] is None
    assert 1 <= rec["spent_block_passes_eval"] <= 6  # the final evaluation is counted anew
    assert 1 <= rec["executed_block_passes_train"] <= 6


def test_a_record_names_the_code_the_run_started_on(tmp_path, monkeypatch):
    versions = iter(["aaaaaaa", "bbbbbbb"])  # as if the files changed between the two parts
    monkeypatch.setattr(train, "code_version", lambda: next(versions))
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "2") == 0
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "4", "--resume") == 0
    rec = record(tmp_path, "copy_iter_s1337")
    assert rec["code"] == "aaaaaaa" and rec["code_resumed"] == ["bbbbbbb"]


def test_under_slurm_the_default_threads_are_the_cpus_of_the_allocation(monkeypatch):
    torch_default = torch.get_num_threads()
    for unset in ("", "0", "two"):  # not a count: torch's default
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", unset)
        assert machine.cpu_threads() == torch_default
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert machine.cpu_threads() == 3


def test_a_record_names_the_threads_of_each_part(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    try:
        assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "2",
                   "--threads", "2") == 0
        assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "4",
                   "--resume", "--threads", "1") == 0
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")  # a Slurm task, no --threads
        assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "6",
                   "--resume") == 0
    finally:
        torch.set_num_threads(before)
    rec = record(tmp_path, "copy_iter_s1337")
    assert rec["threads"] == 2 and rec["threads_resumed"] == [1, 3]


def test_a_mismatching_checkpoint_is_refused_naming_the_fields(tmp_path, capsys):
    assert run(tmp_path, "--model", "dense", "--task", "copy", "--max_iters", "2") == 0
    assert run(tmp_path, "--model", "dense", "--task", "copy", "--max_iters", "4", "--resume",
               "--budget", "12", "--n_embd", "32") == 2
    err = capsys.readouterr().err
    assert "budget 6 there, 12 asked" in err and "n_embd" in err and "dropout" not in err

# -----------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing trained or written (train.py, and the lab it hands to)


def snapshot(path):
    """Every file under path, byte for byte (None where path does not exist)."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """An out_dir with a finished run (dense), an interrupted one (ut, checkpoint but no record),
    a corrupt checkpoint (iter), and files that are not what they claim to be."""
    lab = tmp_path_factory.mktemp("lab")
    good = lab / "good"
    for model in ("dense", "iter", "ut"):
        assert train.main(TINY + ["--max_iters", "2", "--model", model, "--task", "copy",
                                  "--out_dir", str(good)]) == 0
    # as if interrupted: a checkpoint without its record
    os.remove(good / "copy_ut_s1337" / "record.json")
    ckpt = good / "copy_iter_s1337" / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])  # truncated
    os.remove(good / "copy_iter_s1337" / "record.json")
    (lab / "garbage.pt").write_bytes(os.urandom(2000))
    # a valid torch file, not a checkpoint
    torch.save({"weights": torch.zeros(3)}, lab / "foreign.pt")
    (lab / "a_file").write_text("")
    (lab / "torn").mkdir()
    (lab / "torn" / "copy_dense_s1337").mkdir()
    (lab / "torn" / "copy_dense_s1337" / "record.json").write_text('{"task": "copy", "mod')
    return lab


FLOATS = [k for k, (v, _) in train.SETTINGS.items() if isinstance(v, float)]
BAD_INPUT = {  # what stderr must say: the flags (added to a tiny dense-on-copy run into lab/good)
    "comma list of whole numbers, got '6,abc'": ["--eval_lengths", "6,abc"],
    "--eval_lengths names no length": ["--eval_lengths", ",,"],
    "--model names no model": ["--model", ""],
    "--task names no task": ["--task", ""],
    "unknown model 'gpt'": ["--model", "gpt"],
    "unknown model 'ar_trm+sparkle'": ["--model", "ar_trm+sparkle"],
    "unknown task 'shuffle'": ["--task", "shuffle"],
    "error: budget 8 is impossible for nested_ut": ["--model", "dense,nested_ut", "--budget", "8"],
    "--n_digits must be positive": ["--n_digits", "0"],
    "--eval_lengths must be positive": ["--eval_lengths", "3,-1"],
    "more than --block_size 24": ["--task", "addition", "--eval_lengths", "3,8"],
    "--lr must be positive": ["--lr=-1"],
    "multiple of n_head (5)": ["--n_embd", "64", "--n_head", "5"],
    "n_embd (0)": ["--n_embd", "0"],
    "dropout must be in [0, 1)": ["--dropout", "2"],
    "n_outer and n_inner must be at least 1": ["--model", "nested_ut", "--n_outer", "0"],
    "n_outer and n_inner must be at least 1 ": ["--model", "ar_trm", "--n_inner", "0"],
    "--temperature must be zero or positive": ["--temperature=-1"],
    "--warmup_iters must be zero or positive": ["--warmup_iters=-5"],
    "--weight_decay must be zero or positive": ["--weight_decay=-0.1"],
    "--grad_clip must be zero or positive": ["--grad_clip=-1"],
    "ponder_weight must be >= 0": ["--ponder_weight=-1"],
    "halt_explore must be in [0, 1]": ["--halt_explore", "1.5"],
    "invalid int value": ["--max_iters", "ten"],
    "a_file is a file, not a directory": ["--out_dir", "{lab}/a_file"],
    "a_file is a file, not a directory ": ["--out_dir", "{lab}/a_file/sub"],
    "--out_dir is empty": ["--out_dir", ""],
    "trained with other settings (lr 0.003 there, 0.0001 asked)": ["--resume", "--lr", "0.0001"],
    "(budget 6 there, 12 asked; batch_size 8 there, 4 asked)":
        ["--budget", "12", "--batch_size", "4"],
    "differs in eval_lengths; add --resume": ["--eval_lengths", "3,4,5"],
    "unfinished run; add --resume": ["--model", "ut"],
    "copy_ut_s1337/ckpt.pt was trained with other settings (lr":
        ["--model", "ut", "--resume", "--lr", "0.01"],
    "has trained 2 iterations already, more than --max_iters 1":
        ["--model", "ut", "--resume", "--max_iters", "1"],
    "no checkpoint at": ["--model", "iter_step", "--resume"],
    # handed over to the lab, which checks as much before any work
    "copy_iter_s1337/ckpt.pt is corrupt or truncated":
        ["--model", "ut,iter", "--resume"],  # before ut trains
    "--jobs must be positive": ["--model", "dense,iter", "--jobs", "0"],
    "--seeds must be positive": ["--seeds", "0"],
    "--shard takes K/N": ["--shard", "2/2"],
    "torn/copy_dense_s1337/record.json is not a run record":
        ["--seeds", "2", "--out_dir", "{lab}/torn"],
    "no checkpoint at ": ["--eval_only", "--ckpt", "{lab}/missing.pt"],
    "garbage.pt is corrupt or truncated": ["--eval_only", "--ckpt", "{lab}/garbage.pt"],
    "foreign.pt is a torch file but not an artrm checkpoint":
        ["--eval_only", "--ckpt", "{lab}/foreign.pt"],
    "no run records in": ["--report", "--out_dir", "{lab}/nothing"],
    "--eval_budgets: dense has no tied depth": ["--eval_budgets", "12"],
    "--eval_budgets 9: budget 9 is impossible for nested_ut":
        ["--model", "nested_ut", "--eval_budgets", "9"],
    "--step_extend is cycle or last":
        ["--model", "ut", "--eval_budgets", "12", "--step_extend", "first"],
    **{f"--{k} must be a finite number, got {v}": [f"--{k}", v]
       for k in FLOATS for v in ("nan", "inf")},
}
if not torch.cuda.is_available():
    BAD_INPUT["cuda is not available"] = ["--device", "cuda"]
    BAD_INPUT["--compile is offered on CUDA only"] = ["--compile", "--device", "auto"]
if os.geteuid() != 0:  # root may write into a read-only directory
    BAD_INPUT["readonly is not writable"] = ["--out_dir", "{lab}/readonly/out"]


def test_every_float_flag_is_walked_for_nan_and_inf():
    assert {"lr", "dropout", "weight_decay", "ponder_weight", "halt_explore", "grad_clip",
            "temperature"} <= set(FLOATS)


@pytest.mark.parametrize("want", BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(lab, want, capfd):
    (lab / "readonly").mkdir(mode=0o555, exist_ok=True)
    bad = [f.format(lab=lab) for f in BAD_INPUT[want]]
    out_dir = bad[bad.index("--out_dir") + 1] if "--out_dir" in bad else str(lab / "good")
    before = {p: snapshot(p) for p in (lab / "good", lab / "nothing", lab / "torn")}
    capfd.readouterr()
    argv = TINY + ["--max_iters", "2", "--model", "dense", "--task", "copy",
                   "--out_dir", out_dir] + bad
    try:
        entry = flags.lab_for(argv, train.SETTINGS, train.PRESETS)
    except records.UserError:
        entry = None  # train.main says so
    # the lab's checks run here, in this process (train.py hands over to a process of its own:
    # test_grid.py)
    code = importlib.import_module(entry[:-3]).main(argv) if entry else train.main(argv)
    err = capfd.readouterr().err.strip()
    assert code == 2, (bad, code, err)
    assert want.strip() in err, (bad, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), (bad, err)
    assert "weights_only=False" not in err  # never the advice to unpickle a file one does not trust
    assert {p: snapshot(p) for p in before} == before  # nothing trained, nothing written
    if out_dir not in (str(lab / "good"), str(lab / "torn")):  # where it has runs already
        assert not os.path.exists(os.path.join(out_dir, "copy_dense_s1337"))
