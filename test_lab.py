"""Tests of the lab beside the run: the grid (one train.py process per run, --jobs, --shard,
signals, a killed run), evaluate.py (saved checkpoints, test-time budgets), report.py (tables
and figures from records alone) and bench.py; and the committed records against the README."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import bench
import evaluate
import grid
import records
import report
import tasks
import train
from artrm import Config, Model
from test_artrm import PAPER_RUNGS, never_halt, tiny
from test_train import TINY

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS = torch.get_num_threads()


def run_grid(out_dir, *extra):
    return grid.main(TINY + ["--out_dir", str(out_dir)] + list(extra))


def records_of(out_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in out_dir.glob("*/record.json")}


def results(out_dir):
    with open(out_dir / "results.json") as f:
        return json.load(f)


def same_records(a, b):
    """Records equal but for what depends on the machine's moment (wall time)."""
    drop = lambda r: {k: v for k, v in r.items() if k not in ("wall_s",)}
    return {k: drop(v) for k, v in a.items()} == {k: drop(v) for k, v in b.items()}

# -----------------------------------------------------------------------------
# The grid: a list of train.py commands


def test_the_run_list_and_its_shards_partition_it_exactly():
    args = grid.parse_args(["--model", ",".join(PAPER_RUNGS), "--task", "copy,reverse,addition", "--seeds", "3"])
    runs = grid.plan(args)
    assert len(runs) == 63 and len(set(runs)) == 63 and runs[0] == ("copy", "dense", 1337)
    for n in (1, 2, 5, 8, 63, 100):
        parts = [grid.shard(runs, k, n) for k in range(n)]
        assert sorted(r for p in parts for r in p) == sorted(runs)  # every run in exactly one shard
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert grid.parse_args(["--shard", "3/8"]).shard_k == 3
    for bad in ("8/8", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(train.UserError, match="--shard takes K/N"):
            grid.parse_args([f"--shard={bad}"])


def test_each_run_is_the_train_command_a_user_would_type(tmp_path):
    args = grid.parse_args(TINY + ["--model", "dense,ut", "--task", "copy", "--seeds", "2", "--jobs", "2",
                                   "--out_dir", str(tmp_path), "--max_iters=3", "--no-decay_lr"])
    cmd = grid.command(args, ("copy", "ut", 1338), resume=True, threads=1)
    assert cmd[:2] == ["python", "train.py"] and "--jobs" not in cmd and "--seeds" not in cmd
    assert cmd[-9:] == ["--model", "ut", "--task", "copy", "--seed", "1338", "--resume", "--threads", "1"]
    assert "--max_iters=3" in cmd and "--no-decay_lr" in cmd
    ran = train.parse_args(cmd[2:])  # what train.py makes of it: the grid's settings, this run
    assert (ran.model, ran.seed, ran.max_iters, ran.decay_lr, ran.n_embd) == ("ut", 1338, 3, False, 16)
    assert train.lab_for(cmd[2:]) is None  # one run: train.py trains it, hands nothing on


def test_a_grid_writes_one_record_per_run_and_a_table_row_per_model(tmp_path, capfd):
    models = ("dense", "dual_ut", "ar_trm")  # a flat, a two-stream and a nested rung
    assert run_grid(tmp_path, "--model", ",".join(models), "--task", "copy", "--max_iters", "2", "--jobs", "2") == 0
    assert sorted((r["task"], r["model"], r["seed"]) for r in results(tmp_path)) == \
        sorted(("copy", m, 1337) for m in models)
    out = capfd.readouterr().out
    table = out.split("== copy")[1]
    for rung in models:
        assert f"\n{rung} " in table, rung
    assert "| ar_trm |" in (tmp_path / "results.md").read_text()
    assert "Q1..Q4" in out and "| eta " in out and "python train.py" in out  # each run's command, printed


def test_a_failing_run_in_the_middle_is_recorded_and_the_rest_go_on(tmp_path, monkeypatch):
    (tmp_path / "site").mkdir()  # a run of iter_step diverges: its loss is nan from the first step
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import sys\nif 'iter_step' in sys.argv:\n"
        f"    sys.path.insert(0, {HERE!r})\n    import artrm\n    real = artrm.cross_entropy\n"
        "    artrm.cross_entropy = lambda logits, targets: real(logits, targets) * float('nan')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    assert run_grid(tmp_path / "out", "--model", "iter,iter_step,ut", "--task", "copy", "--max_iters", "2") == 1
    recs = results(tmp_path / "out")
    assert [(r["model"], r["status"]) for r in recs] == [("iter", "ok"), ("iter_step", "failed"), ("ut", "ok")]
    assert "nan at iter 0" in recs[1]["error"]


def test_the_grid_again_skips_finished_runs_and_resumes_the_rest(tmp_path, capfd):
    p = subprocess.run([sys.executable, "train.py", *TINY, "--model", "dense,iter", "--task", "copy", "--max_iters",
                        "3", "--out_dir", str(tmp_path)], cwd=HERE, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "== copy" in p.stdout, p.stderr  # train.py handed the comparison to grid.py
    capfd.readouterr()
    assert run_grid(tmp_path, "--model", "dense,iter,ut", "--task", "copy", "--max_iters", "3", "--resume") == 0
    out = capfd.readouterr().out
    assert out.count("is finished in") == 2 and "copy_ut_s1337:" in out
    assert [r["model"] for r in results(tmp_path)] == ["dense", "iter", "ut"]


def test_jobs_2_gives_the_records_of_jobs_1(tmp_path, capfd):
    flags = ["--model", "iter,ut", "--task", "copy", "--max_iters", "4", "--threads", "1"]
    assert run_grid(tmp_path / "one", *flags) == 0
    capfd.readouterr()
    assert run_grid(tmp_path / "two", *flags, "--jobs", "2") == 0
    out = capfd.readouterr().out
    assert out.count("start copy_") == 2 and "eta" in out and "char_acc" in out  # a line per start and finish
    one, two = records_of(tmp_path / "one"), records_of(tmp_path / "two")
    assert sorted(one) == ["copy_iter_s1337", "copy_ut_s1337"] and same_records(one, two)
    log = (tmp_path / "two" / "copy_ut_s1337" / "train.log").read_text()
    assert "iter 00004/00004" in log and "eval iter 4" in log  # each run's full log in its directory


def test_variants_share_one_table_and_flops_match_sets_iters_by_construction(tmp_path, capfd):
    assert run_grid(tmp_path, "--model", "ar_trm,ar_trm+full_grad", "--task", "copy", "--max_iters", "4",
                    "--flops_match", "ar_trm+full_grad") == 0
    recs = {r["name"]: r for r in results(tmp_path)}
    full, paper = recs["ar_trm+full_grad"], recs["ar_trm"]
    assert full["model"] == paper["model"] == "ar_trm" and full["iters"] == 4
    assert paper["iters"] == round(4 * full["train_flops_per_token"] / paper["train_flops_per_token"]) > 4
    assert full["grad_block_passes"] == 6 and paper["grad_block_passes"] == 3
    table = capfd.readouterr().out.split("== copy")[1]
    assert "\nar_trm " in table and "\nar_trm+full_grad " in table


def test_concurrent_processes_into_one_out_dir_lose_no_record(tmp_path):
    runs = [("copy", "dense")]
    procs = [subprocess.Popen([sys.executable, "grid.py", *TINY, "--max_iters", "2", "--eval_lengths", "3",
                               "--model", model, "--task", task, "--seeds", "2", "--jobs", "2", "--out_dir",
                               str(tmp_path)], cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for task, model in runs]  # a grid of two seeds, two at a time, writing its views
    procs += [subprocess.Popen([sys.executable, "train.py", *TINY, "--max_iters", "2", "--eval_lengths", "3",
                                "--model", "ut", "--task", task, "--out_dir", str(tmp_path)],
                               cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for task in ("copy", "reverse")]  # and two single runs beside them
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    recs = records_of(tmp_path)
    assert sorted(recs) == sorted([f"{t}_{m}_s{s}" for t, m in runs for s in (1337, 1338)]
                                  + ["copy_ut_s1337", "reverse_ut_s1337"])
    for path in tmp_path.rglob("*"):  # every file whole: no temporary left, every JSON readable
        assert not path.name.endswith(".tmp"), path
        if path.suffix == ".json":
            json.loads(path.read_text())
    assert report.main(["--out_dir", str(tmp_path)]) == 0
    assert len(results(tmp_path)) == 4  # --report rebuilds the view from every record


def test_two_shards_run_the_grid_between_them_and_the_report_names_what_is_missing(tmp_path, capfd):
    flags = ["--model", "dense,ut", "--task", "copy,reverse", "--max_iters", "3"]
    ran = []
    for k in (0, 1):
        assert run_grid(tmp_path / "shards", *flags, "--shard", f"{k}/2") == 0
        ran.append(sorted(records_of(tmp_path / "shards")))
    assert len(ran[0]) == 2 and len(ran[1]) == 4  # two runs each (the records do not depend on who ran them:
    capfd.readouterr()                            # see test_jobs_2_gives_the_records_of_jobs_1)
    assert report.main(["--out_dir", str(tmp_path / "shards")]) == 0
    out = capfd.readouterr().out
    cols = lambda line: re.split(r"\s{2,}", line.strip())
    assert len([c for c in map(cols, out.splitlines()) if len(c) == 12]) == 2 + 4  # two headers, four rows
    assert (tmp_path / "shards" / "results.md").read_text().count("| ut ") == 2
    # a grid given to --report: its missing run is named with the command that runs it
    assert report.main(TINY + ["--report", "--out_dir", str(tmp_path / "shards"), *flags, "--seeds", "2"]) == 0
    out = capfd.readouterr().out
    assert "4 of 8 run(s) of this grid are missing" in out
    cmd = next(line for line in out.splitlines() if "missing:" in line and "--model ut --task reverse --seed 1338" in line)
    assert "--report" not in cmd and "--jobs" not in cmd and "--max_iters 3" in cmd and "--n_embd 16" in cmd

# -----------------------------------------------------------------------------
# Signals and a killed run: a cluster's ways of ending a job


def start_grid(out_dir, *flags, entry="grid.py"):
    return subprocess.Popen([sys.executable, entry, *TINY, "--task", "copy", "--out_dir", str(out_dir), *flags],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(path, proc, timeout=120):
    t = time.time()
    while not path.exists():
        assert proc.poll() is None and time.time() - t < timeout, "the grid ended before it got there"
        time.sleep(0.02)


def pids_of(pattern):
    return [int(p) for p in subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True,
                                           text=True).stdout.split()]


@pytest.mark.parametrize("to", ["train.py alone", "every process of the job"])
def test_sigterm_stops_every_run_of_a_grid_with_its_checkpoint(tmp_path, to):
    proc = start_grid(tmp_path, "--model", "iter,ut,dense", "--max_iters", "100000", "--ckpt_interval", "5",
                      "--jobs", "2", "--threads", "1", entry="train.py")  # which hands it to grid.py
    for run in ("copy_iter_s1337", "copy_ut_s1337"):
        wait_for(tmp_path / run / "ckpt.pt", proc)
    # kill sends to one process; a scheduler (Slurm at a time limit) to every process of the job,
    # so each run gets the signal more than once: from the scheduler and passed on by the grid
    pids = [proc.pid] + (pids_of(str(tmp_path)) if to == "every process of the job" else [])
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    for run in ("copy_iter_s1337", "copy_ut_s1337"):  # each run saved its state where the signal found it
        assert "interrupted (SIGTERM) at iter" in (tmp_path / run / "train.log").read_text()
        assert not (tmp_path / run / "record.json").exists()
    assert not (tmp_path / "copy_dense_s1337").exists()  # never started
    left = [line for line in err.splitlines() if "did not finish" in line]
    assert len(left) == 3 and all("--model" in line for line in left)
    assert "--model iter --task copy --seed 1337 --resume" in err and "--model dense --task copy --seed 1337\n" in err + "\n"


def test_a_run_killed_outright_costs_only_itself(tmp_path, capsys):
    proc = start_grid(tmp_path, "--model", "iter,ut", "--max_iters", "400", "--jobs", "2", "--threads", "1")
    t = time.time()
    while not (victims := pids_of("--model iter --task copy")):
        assert proc.poll() is None and time.time() - t < 60
        time.sleep(0.01)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err  # the grid went on, and says it is not done
    assert records.read_record(str(tmp_path / "copy_ut_s1337" / "record.json"))["status"] == "ok"
    assert "copy_iter_s1337 did not finish (killed by SIGKILL); to go on with it: python train.py" in err
    assert not (tmp_path / "copy_iter_s1337" / "record.json").exists()
    assert report.main(["--out_dir", str(tmp_path), "--model", "iter,ut", "--task", "copy"] + TINY) == 0
    assert "missing: python train.py" in capsys.readouterr().out  # the report names it too


# -----------------------------------------------------------------------------
# evaluate.py: saved checkpoints, thinking longer or shorter at test time


def test_eval_only_evaluates_a_checkpoint_at_new_lengths(tmp_path, capsys):
    assert train.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter_step", "--task", "reverse",
                              "--max_iters", "3"]) == 0
    capsys.readouterr()
    # the checkpoint's own config wins: a different budget asked for is ignored
    assert evaluate.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter_step", "--task", "reverse",
                                 "--eval_only", "--eval_lengths", "2,5", "--budget", "12"]) == 0
    out = capsys.readouterr().out
    assert "L=2: char_acc" in out and "L=5: char_acc" in out


def test_a_tied_rung_past_its_trained_steps_cycles_its_step_embeddings():
    torch.manual_seed(0)
    model = Model(tiny("iter_step", budget=3)).eval()  # N = 3 trained steps
    idx = torch.randint(0, 14, (2, 7))
    x = model.wte(idx) + model.wpe(torch.arange(7))
    for extend, order in (("cycle", [0, 1, 2, 0, 1, 2, 0]), ("last", [0, 1, 2, 2, 2, 2, 2])):
        h = x
        for t in order:
            h = model.blocks[0](h + model.step_emb.weight[t])
        logits, _ = model(idx, n_steps=7, extend=extend)
        assert torch.allclose(logits, model.lm_head(model.ln_f(h)), atol=1e-6), extend
    with pytest.raises(ValueError, match="dense has no tied depth"):
        Model(tiny("dense", budget=3))(idx, n_steps=6)


@pytest.mark.parametrize("rung", ["iter", "ut", "ar_trm"])
def test_its_own_budget_gives_the_normal_evaluation_and_more_budget_runs_more_passes(rung):
    torch.manual_seed(0)
    model = never_halt(Model(tiny(rung, budget=6)))
    normal = train.evaluate(model, "copy", [3], 16, "cpu")
    same = train.evaluate(model, "copy", [3], 16, "cpu", n_steps=model.config.n_steps)
    assert same == normal
    longer = train.evaluate(model, "copy", [3], 16, "cpu", n_steps=2 * model.config.n_steps)
    assert longer["3"]["passes"] == 2 * normal["3"]["passes"] == 12


def test_eval_budgets_are_recorded_beside_the_run_and_reported(tmp_path, capsys):
    assert run_grid(tmp_path, "--model", "iter,ut", "--task", "copy", "--max_iters", "2", "--eval_budgets", "3,6,12",
                    "--eval_lengths", "3") == 0
    e = json.loads((tmp_path / "copy_ut_s1337" / "test_budgets.json").read_text())
    assert (e["train_budget"], e["extend"], e["seed"], sorted(e["budgets"])) == (6, "cycle", 1337, ["12", "3", "6"])
    assert e["budgets"]["6"]["3"]["char_acc"] == results(tmp_path)[1]["eval"]["3"]["char_acc"]  # ut's own budget
    capsys.readouterr()
    assert report.main(["--out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "thinking longer or shorter" in out and "budget 12" in out and "\nut (cycle)" in out
    # and on a saved checkpoint, with the other way of extending the step embeddings
    assert evaluate.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter", "--task", "copy",
                                 "--eval_budgets", "24", "--step_extend", "last"]) == 0
    e = json.loads((tmp_path / "copy_iter_s1337" / "test_budgets.json").read_text())
    assert e["extend"] == "last" and list(e["budgets"]) == ["24"] and e["budgets"]["24"]["3"]["passes"] == 24

# -----------------------------------------------------------------------------
# report.py: tables and figures from records alone


def test_the_report_needs_no_torch(tmp_path):
    code = "import sys, report; assert 'torch' not in sys.modules; print(report.RUNGS, report.TASKS)"
    p = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    from artrm import RUNGS
    assert p.stdout.strip() == f"{RUNGS} {tasks.TASKS}"  # the ladder's order, read without importing it


def test_mean_and_std_over_seeds():
    m, s = report.mean_std([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7) and s == pytest.approx(0.2)  # sample std (n-1)
    assert report.mean_std([0.25]) == (0.25, 0.0)
    assert report.pm([1.0, 0.0]) == "0.500±0.707" and report.pm([0.25]) == "0.250"  # one seed: no spread shown
    assert report.quarters([1, 1, 0.5, 0.5, 0, 0, 0, 1]) == [1, 0.5, 0, 0.5]


def test_a_model_or_task_this_code_lacks_still_reports(tmp_path, capsys):
    assert train.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter", "--task", "copy", "--max_iters", "2"]) == 0
    rec = json.loads((tmp_path / "copy_iter_s1337" / "record.json").read_text())
    (tmp_path / "sort_mine_s1").mkdir()  # a fork's rung and task, reported beside the ladder's
    records.write_json(str(tmp_path / "sort_mine_s1" / "record.json"), {**rec, "task": "sort", "model": "mine",
                                                                         "name": "mine", "seed": 1})
    assert report.main(["--out_dir", str(tmp_path)] + (["--plot"] if importlib.util.find_spec("matplotlib") else [])) == 0
    out = capsys.readouterr().out
    assert "\nmine " in out.split("== sort")[1] and "\niter " in out.split("== copy")[1]


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    assert train.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter", "--task", "copy", "--max_iters", "2"]) == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert report.main(["--out_dir", str(tmp_path), "--plot"]) == 0
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_plot_writes_position_and_learning_curves(tmp_path):
    pytest.importorskip("matplotlib")
    for model in ("iter", "ut"):
        assert train.main(TINY + ["--out_dir", str(tmp_path), "--model", model, "--task", "reverse",
                                  "--max_iters", "10"]) == 0
    assert report.main(["--out_dir", str(tmp_path), "--plot"]) == 0
    png = tmp_path / "reverse.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_report_over_an_experiment_of_several_grids_keeps_their_rows_apart(tmp_path, capsys):
    for budget in ("6", "12"):  # one grid per budget, each in a folder of the experiment
        assert train.main(TINY + ["--out_dir", str(tmp_path / f"b{budget}"), "--model", "iter", "--task", "copy",
                                  "--max_iters", "2", "--budget", budget]) == 0
    capsys.readouterr()
    assert report.main(["--out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\niter budget=6 " in out and "\niter budget=12 " in out
    assert len(results(tmp_path)) == 2

# -----------------------------------------------------------------------------
# bench.py: speed as ratios measured in one process


def test_bench_counts_the_ops_of_a_step_which_grow_with_the_passes(tmp_path, capsys):
    ops = {}  # the count the GPU estimate rests on: one launch per op per pass
    for budget in ("6", "12"):
        assert bench.main(TINY + ["--out_dir", str(tmp_path), "--profile", "--model", "dense", "--task", "copy",
                                  "--budget", budget, "--threads", "1"]) == 0
        with open(tmp_path / "bench.json") as f:
            b = json.load(f)
        ops[budget] = b["ops_per_step"]
        assert "(1 threads)" in b["hardware"] and torch.get_num_threads() == THREADS  # --threads, then restored
    per_pass = (ops["12"] - ops["6"]) / 6
    assert 20 < per_pass and ops["6"] > 6 * per_pass  # forward + backward + AdamW of a block: tens of ops per pass
    capsys.readouterr()


def test_bench_prints_its_ratios_and_writes_them(tmp_path, capsys):
    assert bench.main(TINY + ["--out_dir", str(tmp_path), "--profile", "--model", "nested_ut", "--task", "copy"]) == 0
    out = capsys.readouterr().out
    assert "fraction" in out and "speedup" in out and "hardware:" in out
    assert "aten::mm" in out and "Self CPU" in out  # --profile: the kernels of one training step
    with open(tmp_path / "bench.json") as f:
        b = json.load(f)
    for key in ("train_tokens_per_s", "train_flops_per_s", "matmul_flops_per_s", "matmul_fraction",
                "eval_batched_per_s", "eval_single_per_s", "eval_speedup", "eval_batched_flops_per_s",
                "eval_single_flops_per_s"):
        assert b[key] > 0, key
    assert b["matmul_fraction"] == pytest.approx(b["train_flops_per_s"] / b["matmul_flops_per_s"])
    assert b["eval_speedup"] == pytest.approx(b["eval_batched_per_s"] / b["eval_single_per_s"])
    assert f"ops: {b['ops_per_step']:,} aten ops per training step" in out
    # halting rungs are credited with the FLOPs they executed, not the budget's ceiling
    config = Config(**{**{k: v for k, v in vars(train.parse_args(TINY)).items()
                          if k in Config.__dataclass_fields__}, "model": "nested_ut"})
    T = tasks.seq_len("copy", 3)
    steps = b["executed_block_passes"] / config.passes_per_step
    flops = Model(config).compute_stats(T, steps=steps)["train_flops_per_token"]
    assert 0 < b["executed_block_passes"] <= 6
    assert b["train_flops_per_s"] == pytest.approx(flops * 8 * T / b["train_step_s"])

# -----------------------------------------------------------------------------
# The committed records: --report rebuilds their views, and the README says what they say


def notes_row(notes, heading, first_cell):
    """The cells of the table row that starts with first_cell, in the section under heading of
    an experiment's notes (results/<experiment>/README.md)."""
    text = open(os.path.join(HERE, "results", notes, "README.md")).read().split(heading, 1)[1]
    line = next(l for l in text.splitlines() if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.parametrize("folder", sorted(d for d in os.listdir(os.path.join(HERE, "results"))
                                           if os.path.isdir(os.path.join(HERE, "results", d))))
def test_the_report_over_each_committed_folder_rebuilds_its_committed_view(tmp_path, folder, capsys):
    src = os.path.join(HERE, "results", folder)
    if not os.path.exists(os.path.join(src, "results.md")):
        pytest.skip(f"{folder} keeps no view")
    out_dir = str(tmp_path / folder)  # a copy: the test writes the views, never into the repository
    shutil.copytree(src, out_dir, ignore=shutil.ignore_patterns("ckpt.pt", "*.png"))
    assert report.main(["--out_dir", out_dir]) == 0
    assert open(os.path.join(out_dir, "results.md")).read() == open(os.path.join(src, "results.md")).read()


def test_the_laptop_notes_table_is_what_the_committed_records_say():
    out_dir = os.path.join(HERE, "results", "laptop")
    recs = records.read_records(out_dir)
    assert len(recs) == 63 and all(r["status"] == "ok" for r in recs.values())
    for rung in PAPER_RUNGS:
        row = notes_row("laptop", "# The laptop reproduction", rung)
        for task, cell in (("copy", 1), ("reverse", 3), ("addition", 5)):
            runs = [r for r in recs.values() if r["task"] == task and r["name"] == rung]
            assert row[cell] == report.pm(r["eval"]["6"]["char_acc"] for r in runs), (rung, task)
    budgets = {(e["name"], b): [x["budgets"][b]["6"]["char_acc"] for x in records.read_test_budgets(out_dir)
                                if x["name"] == e["name"]]
               for e in records.read_test_budgets(out_dir) for b in e["budgets"]}
    row = notes_row("laptop", "## Thinking longer at test time", "ut")
    assert row[3].startswith(report.pm(budgets[("ut", "12")]))


@pytest.mark.parametrize("folder,heading", [("open_question", "**Same budget and iterations**"),
                                            ("open_question_flops", "**Matched training FLOPs**")])
def test_the_open_question_notes_tables_are_what_the_committed_records_say(folder, heading):
    recs = list(records.read_records(os.path.join(HERE, "results", folder)).values())
    names = sorted({r["name"] for r in recs})
    assert len(recs) == 9 * len(names) and len(names) >= 8
    for name in names:
        row = notes_row("open_question", heading, name)
        for task, cell in (("copy", 3), ("reverse", 4), ("addition", 5)):
            runs = [r for r in recs if r["task"] == task and r["name"] == name]
            assert row[cell] == report.pm(r["eval"]["6"]["char_acc"] for r in runs), (folder, name, task)


TOWARD_PAPER = "# From the laptop toward the paper's setting"


def load_sweep():
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(HERE, "results", "toward_paper", "sweep.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    return sweep


def test_the_notes_of_the_steps_toward_the_paper_are_what_the_committed_records_say():
    out_dir = os.path.join(HERE, "results", "toward_paper")
    recs = records.read_records(out_dir)
    folders, acc = load_sweep().sweep(recs)
    assert [f for f, _ in folders][:2] == ["step0_laptop", "step1_budget24"] and folders[1][1] == "budget=24"
    for name, per_folder in acc["addition"].items():  # the README's table is the records' numbers
        row = notes_row("toward_paper", TOWARD_PAPER, name)
        assert row[1:1 + len(folders)] == [report.pm(a) for a in per_folder], name
    # ... and its commands are the ones they ran: each recorded run would be skipped as finished
    notes = open(os.path.join(HERE, "results", "toward_paper", "README.md")).read()
    block = notes.split(TOWARD_PAPER)[1].split("```bash\n")[1].split("```")[0]
    echo = subprocess.run(["bash", "-c", 'python() { printf "%s\\n" "$*"; }\n' + block],
                          capture_output=True, text=True, check=True).stdout
    covered = set()
    for line in echo.splitlines():
        argv = shlex.split(line)
        if argv[0] != "train.py" or "--report" in argv:
            continue
        args = grid.parse_args(argv[1:])
        grid.validate(args)
        args.out_dir = os.path.join(HERE, args.out_dir)
        for run in grid.plan(args):
            path = os.path.relpath(os.path.join(args.out_dir, train.run_name(*run)), out_dir)
            if path in recs:
                assert train.prior(grid.one_run(args, run)) == "finished", path
                covered.add(path)
    assert covered == set(recs)


def test_the_notes_of_the_paper_setting_are_what_its_records_say():
    out_dir = os.path.join(HERE, "results", "toward_paper", "step6_paper")
    for path, r in records.read_records(out_dir).items():
        assert r["config"]["preset"] == "paper" and r["iters"] == r["config"]["max_iters"] == 5000, path
        row, e, at = notes_row("toward_paper", "## Step 6", r["name"]), r["eval"], report.at_training_length(r)
        assert row[1:3] == [f"{at['char_acc']:.3f}", f"{at['seq_acc']:.3f}"], path
        assert row[5] == "/".join(f"{q:.2f}" for q in report.quarters(at["pos_acc"])), path
        assert row[6] == " / ".join(f"{e[n]['char_acc']:.3f}" for n in ("20", "30", "40", "50")), path
        assert row[7] == f"{r['executed_block_passes_train']:.1f} / {r['executed_block_passes_eval']:.1f}", path
        sampled = open(os.path.join(out_dir, path, "eval_temperature1.txt")).read()  # --eval_only's output
        assert f"char_acc {row[3]} seq_acc {row[4]}" in sampled, path


def test_the_sweep_figure_reads_the_folders_in_order_and_what_each_changes(tmp_path):
    for budget in ("6", "12"):
        assert train.main(TINY + ["--out_dir", str(tmp_path / f"b{budget}"), "--model", "iter", "--task", "copy",
                                  "--max_iters", "2", "--budget", budget]) == 0
    recs = records.read_records(str(tmp_path))
    folders, acc = load_sweep().sweep(recs)
    assert folders == [("b6", ""), ("b12", "budget=12")]
    assert acc == {"copy": {"iter": [[recs[os.path.join(b, "copy_iter_s1337")]["eval"]["3"]["char_acc"]]
                                     for b in ("b6", "b12")]}}


DOCS = ["README.md"] + sorted(os.path.relpath(p, HERE) for p in
                               [os.path.join(HERE, "results", "speed.md")] +
                               [os.path.join(HERE, "results", d, "README.md") for d in os.listdir(os.path.join(HERE, "results"))]
                               if os.path.exists(p))


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_resolves_and_every_flag_named_exists(doc):
    text = open(os.path.join(HERE, doc)).read()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(HERE, os.path.dirname(doc), path)) if path else os.path.join(HERE, doc)
        assert os.path.exists(file), (doc, target)
        if anchor:
            headings = [slug(h) for h in re.findall(r"^#+ (.*)$", open(file).read(), re.M)]
            assert anchor in headings, (doc, target)
    known = ({f"--{k}" for k in {**train.SETTINGS, **grid.FLAGS, **evaluate.FLAGS}}
             | {"--preset", "--report", "--help", "--profile", "--out_dir", "--plot"})
    commands = re.findall(r"python (?:train|grid|evaluate|report|bench)\.py([^`\n]*)", text.replace("\\\n", " "))
    assert commands or doc != "README.md"
    for flag in {f for c in commands for f in re.findall(r"(?<![\w-])(--[a-z_]+)", c)}:
        assert flag in known or flag.replace("--no-", "--") in known, (doc, flag)


def test_the_front_door_stays_a_front_door():
    text = open(os.path.join(HERE, "README.md")).read()
    assert text.count("\n") <= 300  # the findings live in each experiment's notes
    assert "python train.py --model ar_trm --task reverse" in text and "python -m pytest -q" in text
    with open(os.path.join(HERE, ".ci", "run")) as f:
        assert "python -m pytest -q" in f.read()  # CI runs the README's test command


def test_every_committed_figure_is_linked_from_the_docs():
    listed = subprocess.run(["git", "ls-files", "*.png"], cwd=HERE, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("not a git checkout")
    linked = set()
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+\.png)\)", open(os.path.join(HERE, doc)).read()):
            linked.add(os.path.normpath(os.path.join(os.path.dirname(doc), target)))
    assert set(listed.stdout.split()) == linked  # a figure nothing links to is not kept

# -----------------------------------------------------------------------------
# sample.py: ask a trained rung, and watch it think step by step

import sample  # noqa: E402


@pytest.fixture(scope="module")
def solved_copy(tmp_path_factory):
    """A tied rung (iter, 6 steps) that solves copy at L=3 in 200 iterations."""
    out = tmp_path_factory.mktemp("copy")
    flags = TINY + ["--model", "iter", "--task", "copy", "--max_iters", "200", "--batch_size", "32",
                    "--eval_lengths", "3", "--eval_interval", "100", "--log_interval", "100", "--out_dir", str(out)]
    assert train.main(flags) == 0
    assert json.loads((out / "copy_iter_s1337" / "record.json").read_text())["eval"]["3"]["seq_acc"] == 1.0
    return str(out / "copy_iter_s1337" / "ckpt.pt")


def test_sample_answers_a_copy_prompt_and_shows_every_step(solved_copy, capsys):
    assert sample.main(["--ckpt", solved_copy, "--prompt", "390|", "--prompt", "071|", "--steps"]) == 0
    out = capsys.readouterr().out
    assert "390|390⏎" in out and "071|071⏎" in out
    assert len(re.findall(r"^  step +\d+ ", out, re.M)) == 2 * 6  # every step of the rung, for each prompt
    assert sample.main(["--ckpt", solved_copy, "--examples", "2"]) == 0  # held-out examples, the answer beside
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("rung", PAPER_RUNGS)
def test_the_steps_are_read_from_a_forward_that_they_leave_unchanged(rung):
    torch.manual_seed(0)
    model = never_halt(Model(tiny(rung, budget=12))).eval()
    idx = torch.randint(0, 14, (3, 9))
    with torch.no_grad():
        plain, _ = model(idx)
    per_step, logits, rec = sample.steps_of(model, idx)
    assert torch.equal(logits, plain)  # recording the steps changes nothing of the forward
    assert len(per_step) == model.config.n_steps
    assert sample.artrm.READOUTS == {None: sample.artrm.FinalReadout, "act": sample.artrm.ACTReadout,
                                     "binary": sample.artrm.HaltReadout}  # put back
    if model.config.rung.halting != "act":  # the last step's readout is the model's output, exactly
        assert torch.equal(per_step[-1], plain)
    if model.config.rung.halting == "binary":
        assert [float(v[0]) for v in rec.logits] == [-30.0] * model.config.n_steps  # the head's logit, each step


BAD_PROMPTS = {
    "outside the vocabulary": ["--prompt", "39a|"],
    "is not a copy question": ["--prompt", "390"],
    "is not a copy question ": ["--prompt", "39|0|"],
    "more than the checkpoint's block_size 24": ["--prompt", "0123456789012345|"],
    "--examples takes 1 to 100": ["--examples", "-1"],
    "--temperature must be zero or positive and finite": ["--temperature", "nan"],
}


@pytest.mark.parametrize("want", BAD_PROMPTS)
def test_a_bad_prompt_or_checkpoint_is_one_line_and_exit_2(solved_copy, tmp_path, want, capsys):
    assert sample.main(["--ckpt", solved_copy] + BAD_PROMPTS[want]) == 2
    err = capsys.readouterr().err.strip()
    assert want.strip() in err and len(err.splitlines()) == 1 and err.startswith("error: ")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    for path, says in ((tmp_path / "missing.pt", "no checkpoint at"), (tmp_path / "foreign.pt", "not an artrm")):
        assert sample.main(["--ckpt", str(path), "--prompt", "390|"]) == 2 and says in capsys.readouterr().err
