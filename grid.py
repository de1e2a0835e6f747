"""
The comparison: every run of tasks x models x seeds, each the very train.py command a user
would type for it, run as its own process, N at a time.

    python grid.py --model all --task all --seeds 3 --jobs 2      # 63 runs, 2 at a time
    python grid.py --model all --task all --seeds 3 --shard 0/8   # this machine's eighth of them

(`python train.py` with the same flags hands them over to this file.) The run list is the
same on every machine, in a fixed order. Every run is checked before any trains: a finished
one with the same settings is skipped, one recorded or saved with settings that change what
it trains is refused, and so is a bad checkpoint. Each run writes its own record, so any
number of grids (a job array on machines sharing one file system) can fill one out_dir.
A signal to this process (Ctrl-C, kill, a scheduler's SIGTERM) is passed to every run, which
saves its checkpoint; a run killed outright costs only itself.
"""

import argparse
import concurrent.futures
import os
import queue
import shlex
import signal
import subprocess
import sys
import time

import torch

import evaluate
import records
import report
import tasks
import train
from artrm import RUNGS, Model
from train import UserError, run_name

FLAGS = dict(  # the comparison's own flags, beside every flag of train.py
    seeds=(1, "run seeds seed .. seed+seeds-1"),
    jobs=(1, "runs at a time, each its own process (on GPU k mod count; CPU threads shared)"),
    shard=("", "K/N: run only the K-th of N disjoint slices of the run list (job arrays)"),
    flops_match=("", "a model: each run trains for the FLOPs that model spends in max_iters (ceiling)"),
    eval_budgets=("", "after each run trains: evaluate.py at these test-time budgets (comma list)"),
    step_extend=("cycle", "with --eval_budgets: cycle or last (see evaluate.py)"),
    plot=(False, "write the figures too (report.py; needs matplotlib)"),
)
OWN = {"--model", "--task", "--seed", "--resume", "--threads", "--report"} | {f"--{k}" for k in FLAGS}


def plan(args):
    """Every run of the grid, in a fixed order: (task, model name, seed)."""
    return [(t, m, s) for t in args.tasks for m in args.models for s in range(args.seed, args.seed + args.seeds)]


def shard(runs, k, n):
    """The K-th of N disjoint slices; round robin, so that each gets a fair mix of rungs."""
    return runs[k::n]


def parse_args(argv=None):
    args = train.parse_args(argv, lab=FLAGS, doc=__doc__)
    try:
        args.shard_k, args.shard_n = (int(v) for v in args.shard.split("/")) if args.shard else (0, 1)
        assert 0 <= args.shard_k < args.shard_n
    except (ValueError, AssertionError):
        raise UserError(f"--shard takes K/N with 0 <= K < N (e.g. 0/8), got {args.shard!r}") from None
    return args


def validate(args):
    train.validate(args)
    for k in ("seeds", "jobs"):
        if getattr(args, k) <= 0:
            raise UserError(f"--{k} must be positive, got {getattr(args, k)}")
    if args.flops_match:
        train.model_config(args, train.expand(args.flops_match, RUNGS, "model")[0])
    budgets = argparse.Namespace(**{**vars(args), "eval_budgets": evaluate.budgets_of(args.eval_budgets)})
    for name in args.models:
        evaluate.check_test_budgets(train.model_config(args, name), budgets)


def matched_iters(args, task, name):
    """With --flops_match, a run's iterations: the ratio of its training FLOPs (ceiling) to
    the reference model's, times max_iters. Compute-matched by construction."""
    if not args.flops_match:
        return args.max_iters
    T = tasks.seq_len(task, args.n_digits)
    with torch.device("meta"):  # no memory, no init: only the FLOP count is wanted
        ref, own = (Model(train.model_config(args, n)).compute_stats(T)["train_flops_per_token"]
                    for n in (args.flops_match, name))
    return round(args.max_iters * ref / own)


def one_run(args, run):
    """The settings of one run of the grid, as train.py would parse its command."""
    task, name, seed = run
    return argparse.Namespace(**{**vars(args), "model": name, "task": task, "seed": seed,
                                 "max_iters": matched_iters(args, task, name)})


def command(args, run, resume=False, threads=0):
    """The train.py command of one run: the grid's flags, less its own, with the run's."""
    this = one_run(args, run)
    return (["python", "train.py"] + report.strip_flags(args.argv, OWN | ({"--max_iters"} if args.flops_match else set()))
            + ["--model", this.model, "--task", this.task, "--seed", str(this.seed)]
            + (["--max_iters", str(this.max_iters)] if args.flops_match else [])
            + (["--resume"] if resume else []) + (["--threads", str(threads)] if threads else []))


def compare(args):
    """Run this shard's runs that are not finished, N at a time, then print the tables."""
    runs = plan(args)
    mine = shard(runs, args.shard_k, args.shard_n)
    records.read_records(args.out_dir)  # a damaged record is refused before any work
    todo = []
    for run in mine:  # every run checked before any trains
        this = one_run(args, run)
        this.resume = args.resume and os.path.exists(os.path.join(args.out_dir, run_name(*run), "ckpt.pt"))
        state = train.prior(this)
        if state != "finished":
            todo.append((run, state is not None))
    jobs = min(args.jobs, len(todo)) or 1
    threads = args.threads or (max(1, torch.get_num_threads() // jobs) if jobs > 1 else 0)
    part = f" (shard {args.shard_k}/{args.shard_n} of {len(runs)})" if args.shard_n > 1 else ""
    print(f"{len(mine)} run(s){part}, {len(mine) - len(todo)} finished already; {jobs} at a time"
          + (f", {threads} thread(s) each" if threads else ""), flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    t0, left = time.time(), execute(args, todo, jobs, threads)
    recorded = records.read_records(args.out_dir)
    grid = {run_name(*r): recorded[run_name(*r)] for r in runs if run_name(*r) in recorded}
    report.print_tables(grid.values())
    budgets = [e for e in records.read_test_budgets(args.out_dir) if run_name(e["task"], e["name"], e["seed"]) in grid]
    report.print_budget_tables(budgets)
    if args.plot:
        report.plot(grid, args.out_dir)
        report.plot_budgets(budgets, args.out_dir)
    print(f"\nrecords in {args.out_dir}/<run>/record.json; views {args.out_dir}/results.json and results.md "
          f"({train.fmt_time(time.time() - t0)} in all)")
    for run, why in left:
        resume = os.path.exists(os.path.join(args.out_dir, run_name(*run), "ckpt.pt"))
        print(f"{run_name(*run)} did not finish ({why}); to go on with it: {shlex.join(command(args, run, resume))}",
              file=sys.stderr)
    failed = any(recorded.get(run_name(*r), {}).get("status") == "failed" for r, _ in todo)
    return 130 if any(why.startswith("stopped") for _, why in left) else 1 if failed or left else 0


def execute(args, todo, jobs, threads):
    """Run the commands of todo, `jobs` at a time; [(run, why)] for those that did not finish."""
    slots, running, stopping, left = queue.Queue(), {}, [], []
    for k in range(jobs):
        slots.put(k)
    gpus = torch.cuda.device_count() if train.get_device(args.device) == "cuda" else 0

    def on_signal(signum, frame):  # pass it on to every run: each saves its checkpoint and stops
        stopping.append(signal.Signals(signum).name)
        for p in list(running.values()):
            p.send_signal(signum)

    def start(i, run, resume):
        if stopping:
            return None
        k = slots.get()
        cmd = command(args, run, resume, threads)
        log = os.path.join(args.out_dir, run_name(*run), "train.log")
        print(f"[{i + 1}/{len(todo)}] start {run_name(*run)}" + (f" (log: {log})" if jobs > 1 else "")
              + f"\n  {shlex.join(cmd)}", flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"CUDA_VISIBLE_DEVICES": str(k % gpus)} if gpus > 1 else {})}
        quiet = subprocess.DEVNULL if jobs > 1 else None  # the run writes its own train.log
        try:  # a session of its own: a terminal's Ctrl-C reaches it once, from here
            p = running[run] = subprocess.Popen([sys.executable, os.path.join(train.HERE, "train.py"), *cmd[2:]],
                                                env=env, stdout=quiet, stderr=quiet, start_new_session=True)
            if stopping:
                p.send_signal(signal.SIGINT)
            code = p.wait()
            if code == 0 and args.eval_budgets and not stopping:
                code = subprocess.call([sys.executable, os.path.join(train.HERE, "evaluate.py")]
                                       + report.strip_flags(args.argv, OWN - {"--eval_budgets", "--step_extend"})
                                       + ["--model", run[1], "--task", run[0], "--seed", str(run[2])]
                                       + (["--threads", str(threads)] if threads else []),
                                       env=env, stdout=quiet, stderr=quiet)
            return code
        finally:
            running.pop(run, None)
            slots.put(k)

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0, done = time.time(), 0
    try:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = {pool.submit(start, i, run, resume): run for i, (run, resume) in enumerate(todo)}
            for f in concurrent.futures.as_completed(futures):
                run, code = futures[f], f.result()
                record = records.read_record(os.path.join(args.out_dir, run_name(*run), "record.json"))
                if record is None:  # killed, stopped, or never started
                    why = "not started" if code is None else f"stopped by {stopping[0]}" if stopping else \
                        f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
                    left.append((run, why))
                    continue
                done += 1
                eta = (time.time() - t0) / done * (len(todo) - done - len(left))
                print(f"[{done}/{len(todo)} done] {train.summary(record)} | eta {train.fmt_time(eta)}", flush=True)
                report.write_views(args.out_dir, records.read_records(args.out_dir))  # every process's records
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return [(run, why) for run, _ in todo for r, why in left if r == run]  # in the grid's order


def main(argv=None):
    try:
        args = parse_args(argv)
        validate(args)
        return compare(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
