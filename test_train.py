"""Tests of one run (train.py): its record and checkpoint, exact resume after a kill, Ctrl-C
or SIGTERM, the record policy, and every bad input refused in one line before any work."""

import ast
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
import resume
import stopping
import tasks
import train
from artrm import Config

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = ["--n_embd", "16", "--n_head", "2", "--budget", "6", "--n_digits", "3",
        "--eval_lengths", "3,4", "--eval_examples", "8", "--batch_size", "8", "--block_size", "24",
        "--log_interval", "5", "--eval_interval", "5", "--device", "cpu"]
# How long a process the tests start may take to end by itself: only a real hang takes this
# long, however busy the machine (a run of these tests' sizes takes seconds when idle).
HANG = 1800  # seconds


def parse(argv, lab=None):
    """What train.py makes of these flags (with lab: its one parse, the lab's flags too)."""
    return flags.parse_args(argv, train.SETTINGS, train.PRESETS, train.__doc__, lab=lab)


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
    lab = {k for f in flags.LAB.values() for k in f}  # the lab's flags, listed once each
    assert out.count("(default:") == len(train.SETTINGS) + 1 + len(lab)  # + --preset
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
    assert rec["error"].endswith("the last good checkpoint is kept")
    calls[0] = 0  # again, with no checkpoint to keep: none is claimed
    assert run(tmp_path / "none", "--model", "iter", "--task", "copy", "--max_iters", "20") == 1
    assert record(tmp_path / "none", "copy_iter_s1337")["error"].endswith("nan at iter 7")


def test_a_checkpoint_holds_the_wall_time_up_to_its_iteration(tmp_path, monkeypatch):
    saved, real = {}, resume.save_checkpoint

    def save(path, model, optimizer, data_gen, device, state, **run):
        saved[state.iter] = state.wall_s
        real(path, model, optimizer, data_gen, device, state, **run)
    monkeypatch.setattr(resume, "save_checkpoint", save)
    # no progress line (where the clock is read) before the checkpoint at iteration 5
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "10",
               "--ckpt_interval", "5", "--log_interval", "1000") == 0
    wall = record(tmp_path, "copy_iter_s1337")["wall_s"]
    assert 0 < saved[5] < saved[10]
    assert wall <= saved[10] < wall + 1  # the last, saved at the end: the record's time

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
    stop = stopping.StopOnSignal("python train.py --resume", "ckpt.pt")
    with pytest.raises(ZeroDivisionError):
        with stop:
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
    real = tasks.evaluate

    def interrupted_at_the_end(model, task, lengths, *a, **k):
        if lengths == [3, 4]:  # the final evaluation (training evaluates at L=3 only)
            raise KeyboardInterrupt
        return real(model, task, lengths, *a, **k)

    monkeypatch.setattr(tasks, "evaluate", interrupted_at_the_end)
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


def test_resume_may_extend_a_run_and_the_record_says_so(tmp_path, capsys):
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "2") == 0
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "4", "--resume") == 0
    rec = record(tmp_path, "copy_iter_s1337")
    assert rec["iters"] == 4 and rec["config"]["max_iters"] == 4
    assert rec["resumed"] == [{"iter": 2, "changed": {"max_iters": [2, 4]}}]
    os.remove(tmp_path / "copy_iter_s1337" / "record.json")  # as if stopped at its end
    capsys.readouterr()
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "4", "--resume") == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "resuming" in line]
    assert said and "with new" not in said[0]  # this part changes nothing; an earlier one did


def test_a_random_depth_run_records_its_draws_and_the_compute_they_spent(tmp_path):
    flags_ = ["--model", "ut+random_depth", "--task", "copy", "--no-decay_lr"]
    assert run(tmp_path / "once", *flags_, "--max_iters", "8") == 0
    rec = record(tmp_path / "once", "copy_ut+random_depth_s1337")
    drawn = rec["depth_drawn"]
    assert sum(drawn["forwards"].values()) == 8 and drawn["min"] < drawn["max"]
    assert rec["name"] == "ut+random_depth"  # the name carries the extension, as for full_grad
    model = artrm.Model(flags.model_config(parse(TINY + flags_), "ut+random_depth"))
    T = tasks.seq_len("copy", 3)
    # ut halts: a batch ran at most its drawn steps, and the FLOPs are those it ran
    assert rec["spent_block_passes_train"] <= drawn["mean"]
    spent = model.compute_stats(T, steps=rec["spent_block_passes_train"])
    assert rec["spent_train_flops_per_token"] == pytest.approx(spent["train_flops_per_token"])
    # the draws resume with the run: 4 iterations, then 4 more, are the 8 at once
    assert run(tmp_path / "parts", *flags_, "--max_iters", "4") == 0
    assert run(tmp_path / "parts", *flags_, "--max_iters", "8", "--resume") == 0
    parts = record(tmp_path / "parts", "copy_ut+random_depth_s1337")
    assert parts["depth_drawn"] == drawn
    assert (parts["final_loss"], parts["eval"]) == (rec["final_loss"], rec["eval"])


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
    older = lambda t: [t["forwards"], t["early_exits"], t["position_steps"]]  # a list, no batch
    ckpt["passes"] = {k: older(v) for k, v in ckpt["passes"].items()}  # as older code saved it
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
    "--n_embd must be positive": ["--n_embd", "0"],
    "dropout must be in [0, 1)": ["--dropout", "2"],
    "--n_outer must be positive": ["--model", "nested_ut", "--n_outer", "0"],
    "--n_inner must be positive": ["--model", "ar_trm", "--n_inner", "0"],
    "--temperature must be zero or positive": ["--temperature=-1"],
    "--warmup_iters must be zero or positive": ["--warmup_iters=-5"],
    "--weight_decay must be zero or positive": ["--weight_decay=-0.1"],
    "--grad_clip must be zero or positive": ["--grad_clip=-1"],
    "--ponder_weight must be zero or positive": ["--ponder_weight=-1"],
    "halt_explore must be in [0, 1]": ["--halt_explore", "1.5"],
    "error: dense+random_depth: random_depth draws the depth of a tied rung":
        ["--model", "dense+random_depth"],
    "error: dense: random_depth draws the depth of a tied rung": ["--random_depth"],
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
        entry = flags.lab_for(parse(argv, flags.LAB))
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

# -----------------------------------------------------------------------------
# The schedule, the metrics and the policies: each test fails on a one-line bug of its kind.

def lrs_of_a_run(tmp_path, monkeypatch, *flags_):
    """The learning rate of every optimizer step of a tiny run with these flags."""
    lrs, configure = [], artrm.Model.configure_optimizers

    def watched(model, *a, **k):
        optimizer = configure(model, *a, **k)
        optimizer.register_step_pre_hook(lambda o, args, kw: lrs.append(o.param_groups[0]["lr"]))
        return optimizer

    monkeypatch.setattr(artrm.Model, "configure_optimizers", watched)
    small = ["--model", "dense", "--task", "copy", "--n_digits", "1", "--eval_lengths", "1",
             "--eval_examples", "1", "--batch_size", "1", "--budget", "1", "--threads", "1",
             "--log_interval", "1000"]
    assert run(tmp_path, *small, "--eval_interval", "1000", *flags_) == 0
    return lrs


def test_the_learning_rate_warms_up_from_lr_over_warmup_then_decays_to_a_tenth(tmp_path,
                                                                                monkeypatch):
    lrs = lrs_of_a_run(tmp_path / "cosine", monkeypatch, "--lr", "0.001", "--warmup_iters", "10",
                       "--max_iters", "50")
    assert len(lrs) == 50
    assert lrs[0] == pytest.approx(0.001 / 10)  # the first step already moves: lr/warmup, not 0
    assert lrs[9] == pytest.approx(0.001)  # the peak at the end of warm-up
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # linear, rising
    assert lrs[30] == pytest.approx((0.001 + 0.0001) / 2)  # cosine: halfway down at half time
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.0001, rel=0.02)  # down to the floor, lr/10, at the end
    assert min(lrs) >= 0.0001 - 1e-12
    flat = lrs_of_a_run(tmp_path / "flat", monkeypatch, "--lr", "0.001", "--warmup_iters", "0",
                        "--no-decay_lr", "--max_iters", "5")
    assert set(flat) == {0.001}  # the paper's


class Answers(torch.nn.Module):
    """A stand-in model whose answer is the right one with some answer digits changed."""

    def __init__(self, wrong):
        super().__init__()
        self.config, self.wrong = Config(model="iter", budget=6), wrong
        self.last_steps = torch.ones(1, 1)

    def forward(self, idx):  # evaluate counts the steps of each forward
        return None

    def generate(self, prompt, n, **kw):
        self(prompt)
        ex = tasks.eval_set("copy", prompt.size(1) - 1, prompt.size(0), "cpu")
        ex[self.wrong] = (ex[self.wrong] + 1) % 10  # rows and answer positions changed
        return ex[:, :prompt.size(1) + n]


def test_seq_acc_counts_a_sequence_right_only_when_every_digit_is():
    P = tasks.prompt_len("copy", 4)
    one_digit_wrong = (slice(None), P + 2)  # every example, its third answer digit
    r = tasks.evaluate(Answers(one_digit_wrong), "copy", [4], 10, "cpu")["4"]
    assert r["seq_acc"] == 0.0 and r["char_acc"] == pytest.approx(3 / 4)
    assert r["pos_acc"] == [1.0, 1.0, 0.0, 1.0]
    half_wrong = (slice(0, 5), slice(P, P + 4))  # five examples wholly wrong, five right
    r = tasks.evaluate(Answers(half_wrong), "copy", [4], 10, "cpu")["4"]
    assert r["seq_acc"] == 0.5 and r["char_acc"] == 0.5


@pytest.mark.parametrize("task", tasks.TASKS)
def test_held_out_examples_are_fixed_per_length_and_apart_from_training(task):
    six, seven = tasks.eval_set(task, 6, 50, "cpu"), tasks.eval_set(task, 7, 50, "cpu")
    assert torch.equal(six, tasks.eval_set(task, 6, 50, "cpu"))  # the same at every evaluation
    assert not torch.equal(six[0, :6], seven[0, :6])  # a stream of its own per length (one
    # stream would start both with the same digits)
    train_batch = tasks.make_examples(task, 6, 50, torch.Generator().manual_seed(1337))
    assert not torch.equal(six, train_batch)  # never the training stream


def test_a_resume_may_change_how_a_run_is_evaluated_and_how_long_it_goes_on_only():
    assert set(resume.RESUMABLE) == {"max_iters", "eval_lengths", "eval_examples",
                                     "eval_interval", "log_interval", "temperature"}
    # the rest define what the run trains: every one of them refused (a few tried end to end
    # in test_bad_input_is_one_line_exit_2_and_touches_nothing)
    defining = set(train.DEFAULTS) - set(resume.RESUMABLE) - set(resume.NOT_THE_RUN)
    assert {"n_digits", "lr", "budget", "seed"} - set(resume.NOT_THE_RUN) <= defining
    for k in sorted(defining):
        with pytest.raises(records.UserError, match=f"trained with other settings \\({k} "):
            resume.check_same_run({k: [1, 2]}, "here", True)


def test_a_changed_n_digits_is_refused_on_resume(tmp_path, capsys):
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "2") == 0
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "4", "--resume",
               "--n_digits", "2", "--eval_lengths", "2") == 2
    assert "n_digits 3 there, 2 asked" in capsys.readouterr().err


def test_a_failed_run_is_run_again_not_skipped(tmp_path, capsys):
    one = ["--model", "iter", "--task", "copy", "--max_iters", "2"]
    assert run(tmp_path, *one) == 0
    path = tmp_path / "copy_iter_s1337" / "record.json"
    failed = {**json.loads(path.read_text()), "status": "failed", "error": "as if it diverged"}
    path.write_text(json.dumps(failed))
    os.remove(tmp_path / "copy_iter_s1337" / "ckpt.pt")
    capsys.readouterr()
    assert run(tmp_path, *one) == 0
    assert "is finished" not in capsys.readouterr().out
    assert record(tmp_path, "copy_iter_s1337")["status"] == "ok"


def test_a_changed_max_iters_goes_on_with_resume_and_says_how(tmp_path, capsys):
    one = ["--model", "iter", "--task", "copy", "--max_iters", "2"]
    assert run(tmp_path, *one) == 0
    more = ["--model", "iter", "--task", "copy", "--max_iters", "4"]
    assert run(tmp_path, *more) == 2
    said = capsys.readouterr().err
    assert "add --resume" in said
    assert run(tmp_path, *more, "--resume") == 0  # what the line said works
    assert record(tmp_path, "copy_iter_s1337")["iters"] == 4
    fewer = ["--model", "iter", "--task", "copy", "--max_iters", "3"]  # never back: no --resume
    assert run(tmp_path, *fewer) == 2
    said = capsys.readouterr().err
    assert "trained 4 iterations already" in said and "add --resume" not in said
    os.remove(tmp_path / "copy_iter_s1337" / "ckpt.pt")  # as a committed run: records only
    assert run(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "6") == 2
    said = capsys.readouterr().err
    assert "no checkpoint to continue from" in said and "add --resume" not in said


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def test_the_code_version_is_the_commit_and_says_dirty_for_changed_python(tmp_path,
                                                                          monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "artrm.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("a\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(records, "HERE", str(tmp_path))
    assert records.code_version() == head
    (tmp_path / "notes.md").write_text("b\n")  # not code: still clean
    (tmp_path / "new.py").write_text("")  # untracked: not this commit's code either way
    assert records.code_version() == head
    (tmp_path / "artrm.py").write_text("x = 2\n")
    assert records.code_version() == head + "+dirty"
    monkeypatch.setattr(records, "HERE", str(tmp_path / "nowhere"))
    assert records.code_version() == "unknown"

# -----------------------------------------------------------------------------
# No typo runs away: every request is decided from one parse, before any process starts.

TYPOS = {  # argv -> what the one line names
    ("--max_iter", "100"): "did you mean --max_iters?",  # abbreviated
    ("--modle", "ut"): "did you mean --model?",  # misspelled
    ("--max_iters=5", "--job", "2"): "did you mean --jobs?",  # a lab flag, abbreviated
    ("--frobnicate",): "unknown flag --frobnicate",  # nothing like it
    ("--seed", "1", "--rep"): "--rep",
}
LAB_TYPOS = {  # each file of the lab, and a typo of one of its own flags
    "grid.py": ["--shar", "0/2"], "evaluate.py": ["--ckp", "x.pt"], "bench.py": ["--max_iter", "2"],
    "sample.py": ["--ckpt", "x.pt", "--prom", "1|"], "export.py": ["a.pt", "b.pt", "--forc"],
}


@pytest.fixture
def no_process(monkeypatch):
    """Any attempt to start a process fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"a process was started: {a}")
    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.mark.parametrize("typo", TYPOS)
def test_a_mistyped_flag_is_refused_in_one_line_before_anything_starts(typo, no_process, capsys):
    assert train.main(["--model", "ut", "--task", "reverse", *typo]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and TYPOS[typo] in err


@pytest.mark.parametrize("file", LAB_TYPOS)
def test_every_lab_file_refuses_a_mistyped_flag_too(file, no_process, capsys):
    code = importlib.import_module(file[:-3]).main(LAB_TYPOS[file])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "unknown flag" in err or "unrecognized" in err, err


def test_a_process_the_lab_started_never_hands_a_request_over(monkeypatch, no_process, capsys):
    monkeypatch.setenv(flags.STARTED_BY, "grid.py")
    for argv in (["--model", "iter,ut"], ["--seeds", "2"], ["--eval_only"], ["--report"]):
        assert train.main(TINY + argv) == 2
        assert "does not hand a request over again" in capsys.readouterr().err


def test_a_typo_on_the_command_line_ends_the_process_with_one_line():
    p = cli("--model", "ut", "--task", "reverse", "--max_iter", "100")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "error: unknown flag --max_iter: did you mean --max_iters? "
        "(python train.py -h lists every flag)"]


def test_a_flag_of_the_wrong_lab_file_is_refused_naming_the_right_one(no_process, capsys):
    assert train.main(TINY + ["--ckpt", "x.pt"]) == 2
    assert "--ckpt is not a flag of grid.py (with --eval_only: evaluate.py)" in \
        capsys.readouterr().err


def test_the_resume_line_names_the_flags_as_parsed(tmp_path, monkeypatch, capsys):
    def stop_at_once(args, config, device, prior, resume_with):
        raise stopping.Interrupted(f"interrupted. Resume with: {resume_with}")
    monkeypatch.setattr(train, "train_run", stop_at_once)
    argv = ["--max_iters=5", "--model", "ut", "--no-decay_lr", "--lr", "3e-4", "--out_dir"]
    assert train.main(argv + [str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip().endswith(  # in SETTINGS' order
        "Resume with: python train.py --model ut --max_iters 5 --lr 0.0003 --no-decay_lr "
        f"--out_dir {tmp_path} --resume")


def test_a_run_parses_its_flags_builds_its_config_and_finds_its_device_once(tmp_path,
                                                                             monkeypatch):
    calls = {"parse": 0, "config": 0, "device": 0}

    def counted(name, real):
        def call(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        return call

    class Counted(Config):
        def __post_init__(self):
            calls["config"] += 1
            super().__post_init__()

    monkeypatch.setattr(flags, "parser", counted("parse", flags.parser))
    monkeypatch.setattr(flags, "Config", Counted)
    monkeypatch.setattr(flags, "get_device", counted("device", flags.get_device))
    assert run(tmp_path, "--model", "ut", "--task", "copy", "--max_iters", "2") == 0
    assert calls == {"parse": 1, "config": 1, "device": 1}
    assert run(tmp_path, "--model", "ut", "--task", "copy", "--max_iters", "4", "--resume") == 0
    assert calls == {"parse": 2, "config": 2, "device": 2}  # the resume decided from the same


# The run's floors, from the ground up: a file imports files of lower floors only, so the
# data never depends on the model, the machine never on the records, the run never on the lab.
FLOORS = [("artrm", "tasks", "machine", "records", "stopping"), ("flags", "resume"), ("train",)]


def test_the_run_s_files_import_only_files_of_lower_floors():
    below = set()
    for floor in FLOORS:
        for name in floor:
            tree = ast.parse(open(os.path.join(HERE, f"{name}.py")).read())
            imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                        for a in node.names}
            imported |= {node.module for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom)}
            ours = {m for m in imported if os.path.exists(os.path.join(HERE, f"{m}.py"))}
            assert ours <= below, f"{name}.py imports {sorted(ours - below)}"
        below |= set(floor)
