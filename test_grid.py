"""Tests of the grid (grid.py): one train.py process per run, the run list and its shards,
--jobs, a failing run, --resume, --flops_match, processes sharing an out_dir, and the ways a
cluster ends a job (SIGTERM to one process or to all, a run killed outright)."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import flags
import grid
import records
import train
from test_artrm import PAPER_RUNGS
from test_train import HANG, TINY, parse

HERE = os.path.dirname(os.path.abspath(__file__))


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
    args = grid.parse_args(["--model", ",".join(PAPER_RUNGS), "--task", "copy,reverse,addition",
                            "--seeds", "3"])
    runs = flags.plan(args)
    assert len(runs) == 63 and len(set(runs)) == 63 and runs[0] == ("copy", "dense", 1337)
    for n in (1, 2, 5, 8, 63, 100):
        parts = [grid.shard(runs, k, n) for k in range(n)]
        # every run in exactly one shard
        assert sorted(r for p in parts for r in p) == sorted(runs)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert grid.parse_args(["--shard", "3/8"]).shard_k == 3
    for bad in ("8/8", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(records.UserError, match="--shard takes K/N"):
            grid.parse_args([f"--shard={bad}"])


def test_each_run_is_the_train_command_a_user_would_type(tmp_path):
    args = grid.parse_args(TINY + ["--model", "dense,ut", "--task", "copy", "--seeds", "2",
                                   "--jobs", "2", "--out_dir", str(tmp_path), "--max_iters=3",
                                   "--no-decay_lr"])
    cmd = grid.command(args, ("copy", "ut", 1338), resume=True, threads=1)
    assert cmd[:2] == ["python", "train.py"] and "--jobs" not in cmd and "--seeds" not in cmd
    assert cmd[-9:] == ["--model", "ut", "--task", "copy", "--seed", "1338", "--resume",
                        "--threads", "1"]
    assert cmd[cmd.index("--max_iters") + 1] == "3" and "--no-decay_lr" in cmd  # as parsed
    ran = parse(cmd[2:], flags.LAB)  # what train.py makes of it: the grid's settings, this run
    assert (ran.model, ran.seed, ran.max_iters, ran.decay_lr, ran.n_embd) == \
        ("ut", 1338, 3, False, 16)
    # one run: train.py trains it, hands nothing on
    assert flags.lab_for(ran) is None


def test_a_grid_writes_one_record_per_run_and_a_table_row_per_model(tmp_path, capfd):
    models = ("dense", "dual_ut", "ar_trm")  # a flat, a two-stream and a nested rung
    assert run_grid(tmp_path, "--model", ",".join(models), "--task", "copy", "--max_iters", "2",
                    "--jobs", "2") == 0
    assert sorted((r["task"], r["model"], r["seed"]) for r in results(tmp_path)) == \
        sorted(("copy", m, 1337) for m in models)
    out = capfd.readouterr().out
    table = out.split("== copy")[1]
    for rung in models:
        assert f"\n{rung} " in table, rung
    assert "| ar_trm |" in (tmp_path / "results.md").read_text()
    # each run's command, printed
    assert "Q1..Q4" in out and "| eta " in out and "python train.py" in out


def test_a_failing_run_in_the_middle_is_recorded_and_the_rest_go_on(tmp_path, monkeypatch):
    (tmp_path / "site").mkdir()  # a run of iter_step diverges: its loss is nan from the first step
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import sys\nif 'iter_step' in sys.argv:\n"
        f"    sys.path.insert(0, {HERE!r})\n    import artrm\n    real = artrm.cross_entropy\n"
        "    artrm.cross_entropy = lambda logits, targets: real(logits, targets) * float('nan')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    assert run_grid(tmp_path / "out", "--model", "iter,iter_step,ut", "--task", "copy",
                    "--max_iters", "2") == 1
    recs = results(tmp_path / "out")
    assert [(r["model"], r["status"]) for r in recs] == \
        [("iter", "ok"), ("iter_step", "failed"), ("ut", "ok")]
    assert "nan at iter 0" in recs[1]["error"]


def test_the_grid_again_skips_finished_runs_and_resumes_the_rest(tmp_path, capfd):
    p = subprocess.run([sys.executable, "train.py", *TINY, "--model", "dense,iter",
                        "--task", "copy", "--max_iters", "3", "--out_dir", str(tmp_path)],
                       cwd=HERE, capture_output=True, text=True, timeout=HANG)
    # train.py handed the comparison to grid.py
    assert p.returncode == 0 and "== copy" in p.stdout, p.stderr
    # two interrupted runs: a checkpoint at iteration 2 of 3, no record
    for model in ("ut", "iter_step"):
        assert train.main(TINY + ["--model", model, "--task", "copy", "--max_iters", "2",
                                  "--out_dir", str(tmp_path)]) == 0
        os.remove(tmp_path / f"copy_{model}_s1337" / "record.json")
    capfd.readouterr()
    assert run_grid(tmp_path, "--model", "dense,iter,ut,iter_step", "--task", "copy",
                    "--max_iters", "3", "--resume") == 0
    out = capfd.readouterr().out
    assert out.count("is finished in") == 2 and "copy_ut_s1337:" in out
    for model in ("ut", "iter_step"):  # each resumed where it stopped, not skipped or restarted
        log = (tmp_path / f"copy_{model}_s1337" / "train.log").read_text()
        assert "from iter 2 with new max_iters" in log, model
        assert records.read_record(str(tmp_path / f"copy_{model}_s1337" / "record.json"))[
            "resumed"] == [{"iter": 2, "changed": {"max_iters": [2, 3]}}]
    assert [r["model"] for r in results(tmp_path)] == ["dense", "iter", "iter_step", "ut"]


def test_jobs_2_gives_the_records_of_jobs_1(tmp_path, capfd, monkeypatch):
    flags = ["--model", "iter,ut", "--task", "copy", "--max_iters", "4"]
    assert run_grid(tmp_path / "one", *flags, "--threads", "2") == 0
    capfd.readouterr()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")  # a Slurm task's 4 CPUs, shared by 2 runs
    assert run_grid(tmp_path / "two", *flags, "--jobs", "2") == 0
    out = capfd.readouterr().out
    assert "2 at a time, 2 thread(s) each" in out
    # a line per start and finish
    assert out.count("start copy_") == 2 and "eta" in out and "char_acc" in out
    one, two = records_of(tmp_path / "one"), records_of(tmp_path / "two")
    assert sorted(one) == ["copy_iter_s1337", "copy_ut_s1337"] and same_records(one, two)
    log = (tmp_path / "two" / "copy_ut_s1337" / "train.log").read_text()
    # each run's full log in its directory
    assert "iter 00004/00004" in log and "eval iter 4" in log


def test_variants_share_one_table_and_flops_match_sets_iters_by_construction(tmp_path, capfd):
    assert run_grid(tmp_path, "--model", "ar_trm,ar_trm+full_grad", "--task", "copy",
                    "--max_iters", "4", "--flops_match", "ar_trm+full_grad") == 0
    recs = {r["name"]: r for r in results(tmp_path)}
    full, paper = recs["ar_trm+full_grad"], recs["ar_trm"]
    assert full["model"] == paper["model"] == "ar_trm" and full["iters"] == 4
    ratio = full["train_flops_per_token"] / paper["train_flops_per_token"]
    assert paper["iters"] == round(4 * ratio) > 4
    assert full["grad_block_passes"] == 6 and paper["grad_block_passes"] == 3
    table = capfd.readouterr().out.split("== copy")[1]
    assert "\nar_trm " in table and "\nar_trm+full_grad " in table


def test_concurrent_processes_into_one_out_dir_lose_no_record(tmp_path):
    runs = [("copy", "dense")]
    short = [*TINY, "--max_iters", "2", "--eval_lengths", "3", "--out_dir", str(tmp_path)]
    quiet = dict(cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs = [subprocess.Popen([sys.executable, "grid.py", *short, "--model", model, "--task", task,
                               "--seeds", "2", "--jobs", "2"], **quiet)
             for task, model in runs]  # a grid of two seeds, two at a time, writing its views
    procs += [subprocess.Popen([sys.executable, "train.py", *short, "--model", "ut",
                                "--task", task], **quiet)
              for task in ("copy", "reverse")]  # and two single runs beside them
    errs = [p.communicate(timeout=HANG)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    recs = records_of(tmp_path)
    assert sorted(recs) == sorted([f"{t}_{m}_s{s}" for t, m in runs for s in (1337, 1338)]
                                  + ["copy_ut_s1337", "reverse_ut_s1337"])
    for path in tmp_path.rglob("*"):  # every file whole: no temporary left, every JSON readable
        assert not path.name.endswith(".tmp"), path
        if path.suffix == ".json":
            json.loads(path.read_text())
    assert grid.main(["--report", "--out_dir", str(tmp_path)]) == 0
    assert len(results(tmp_path)) == 4  # --report rebuilds the view from every record


def test_two_shards_run_the_grid_between_them_and_the_report_names_what_is_missing(tmp_path, capfd):
    flags = ["--model", "dense,ut", "--task", "copy,reverse", "--max_iters", "3"]
    ran = []
    for k in (0, 1):
        assert run_grid(tmp_path / "shards", *flags, "--shard", f"{k}/2") == 0
        ran.append(sorted(records_of(tmp_path / "shards")))
    # two runs each (the records do not depend on who ran them:
    # see test_jobs_2_gives_the_records_of_jobs_1)
    assert len(ran[0]) == 2 and len(ran[1]) == 4
    capfd.readouterr()
    assert grid.main(["--report", "--out_dir", str(tmp_path / "shards")]) == 0
    out = capfd.readouterr().out
    cols = lambda line: re.split(r"\s{2,}", line.strip())
    # two headers, four rows
    assert len([c for c in map(cols, out.splitlines()) if len(c) == 12]) == 2 + 4
    assert (tmp_path / "shards" / "results.md").read_text().count("| ut ") == 2
    # a grid given to --report: its missing run is named with the command that runs it
    assert grid.main(TINY + ["--report", "--out_dir", str(tmp_path / "shards"), *flags,
                             "--seeds", "2"]) == 0
    out = capfd.readouterr().out
    assert "4 of 8 run(s) of this grid are missing" in out
    cmd = next(line for line in out.splitlines()
               if "missing:" in line and "--model ut --task reverse --seed 1338" in line)
    assert "--report" not in cmd and "--jobs" not in cmd
    assert "--max_iters 3" in cmd and "--n_embd 16" in cmd

# -----------------------------------------------------------------------------
# Signals and a killed run: a cluster's ways of ending a job. The tests signal only the
# processes they started: the grid, and the runs the grid started (its children in /proc).


def start_grid(out_dir, *flags, entry="grid.py"):
    argv = [sys.executable, entry, *TINY, "--task", "copy", "--out_dir", str(out_dir), *flags]
    return subprocess.Popen(argv, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_until(found, proc):
    """found()'s first true value; fails as soon as proc ends without one (however busy the
    machine, only a hang reaches the backstop)."""
    t = time.time()
    while not (it := found()):
        assert proc.poll() is None, "the grid ended before it got there"
        assert time.time() - t < HANG, "nothing in half an hour: a hang"
        time.sleep(0.02)
    return it


def last_iter(log):
    """The iteration of the last progress line in a run's train.log (0 before the first)."""
    found = re.findall(r"^iter (\d+)/", log.read_text() if log.exists() else "", re.M)
    return int(found[-1]) if found else 0


def communicate_unless_a_run_goes_on(proc, logs, margin=50):
    """proc's (out, err) once it ends. A run that goes on `margin` iterations after the signal
    has ignored it: that fails at once, counted in iterations, not seconds (a busy machine
    slows both alike), instead of waiting for a run of 100,000 iterations."""
    at = {log: last_iter(log) for log in logs}
    while proc.poll() is None:
        for log in logs:
            assert last_iter(log) < at[log] + margin, f"{log} went on after the signal"
        time.sleep(0.05)
    return proc.communicate()


def children(pid):
    """The processes pid started that have not been reaped. Linux lists them under the thread
    that started them: the grid starts each run from a thread of its pool."""
    pids = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:  # a thread, or the process, that has just ended
            pass
    return pids


def descendants(pid):
    """Every process pid started, and every process those started, in turn."""
    kids = children(pid)
    return kids + [d for k in kids for d in descendants(k)]


def runs_of(proc, model):
    """The grid's runs of this model: its children given --model model (once they exec)."""
    found = []
    for pid in children(proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                argv = f.read()
        except OSError:  # ended
            continue
        if f"\0--model\0{model}\0" in argv:
            found.append(pid)
    return found


ME = os.getpid()
needs_proc = pytest.mark.skipif(not os.path.exists(f"/proc/{ME}/task/{ME}/children"),
                                reason="finds the grid's runs as its children in /proc (Linux)")


@pytest.mark.parametrize("to", ["train.py alone",
                                pytest.param("every process of the job", marks=needs_proc)])
def test_sigterm_stops_every_run_of_a_grid_with_its_checkpoint(tmp_path, to):
    proc = start_grid(tmp_path, "--model", "iter,ut,dense", "--max_iters", "100000",
                      "--ckpt_interval", "5", "--jobs", "2", "--threads", "1",
                      entry="train.py")  # which hands it to grid.py
    for run in ("copy_iter_s1337", "copy_ut_s1337"):
        wait_until((tmp_path / run / "ckpt.pt").exists, proc)
    # kill sends to one process; a scheduler (Slurm at a time limit) to every process of the job,
    # so each run gets the signal more than once: from the scheduler and passed on by the grid
    pids = [proc.pid] + (descendants(proc.pid) if to == "every process of the job" else [])
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    logs = [tmp_path / run / "train.log" for run in ("copy_iter_s1337", "copy_ut_s1337")]
    out, err = communicate_unless_a_run_goes_on(proc, logs)
    assert proc.returncode == 130, err
    # each run saved its state where the signal found it
    for run in ("copy_iter_s1337", "copy_ut_s1337"):
        assert "interrupted (SIGTERM) at iter" in (tmp_path / run / "train.log").read_text()
        assert not (tmp_path / run / "record.json").exists()
    assert not (tmp_path / "copy_dense_s1337").exists()  # never started
    left = [line for line in err.splitlines() if "did not finish" in line]
    assert len(left) == 3 and all("--model" in line for line in left)
    assert "--model iter --task copy --seed 1337 --resume" in err
    assert "--model dense --task copy --seed 1337\n" in err + "\n"


@needs_proc
def test_a_run_killed_outright_costs_only_itself(tmp_path, capsys):
    proc = start_grid(tmp_path, "--model", "iter,ut", "--max_iters", "400", "--jobs", "2",
                      "--threads", "1")
    victims = wait_until(lambda: runs_of(proc, "iter"), proc)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 1, err  # the grid went on, and says it is not done
    assert records.read_record(str(tmp_path / "copy_ut_s1337" / "record.json"))["status"] == "ok"
    says = "copy_iter_s1337 did not finish (killed by SIGKILL); to go on with it: python train.py"
    assert says in err
    assert not (tmp_path / "copy_iter_s1337" / "record.json").exists()
    assert grid.main(["--report", "--out_dir", str(tmp_path), "--model", "iter,ut",
                      "--task", "copy"] + TINY) == 0
    assert "missing: python train.py" in capsys.readouterr().out  # the report names it too
