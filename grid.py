"""
The comparison: every run of tasks x models x seeds, each the very train.py command a user
would type for it, run as its own process, N at a time.

    python grid.py --model all --task all --seeds 3 --jobs 2      # 63 runs, 2 at a time
    python grid.py --model all --task all --seeds 3 --shard 0/8   # this machine's eighth of them
    python grid.py --report --model all --task all --seeds 3      # its tables, and what it lacks

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
import figures
import flags
import records
import report
import resume
import tasks
import train
from artrm import LADDER, Model
from machine import cpu_threads
from records import UserError, fmt_time, run_name, summary
from stopping import handling

HERE = os.path.dirname(os.path.abspath(__file__))
OWN = {"model", "task", "seed", "resume", "threads"} | set(flags.GRID)  # not passed to a run


def shard(runs, k, n):
    """The K-th of N disjoint slices; round robin, so that each gets a fair mix of rungs."""
    return runs[k::n]


def parse_args(argv=None):
    args = flags.parse_args(argv, train.SETTINGS, train.PRESETS, __doc__,
                            lab={"grid.py": flags.GRID})
    try:
        k_n = (int(v) for v in args.shard.split("/")) if args.shard else (0, 1)
        args.shard_k, args.shard_n = k_n
        assert 0 <= args.shard_k < args.shard_n
    except (ValueError, AssertionError):
        raise UserError("--shard takes K/N with 0 <= K < N (e.g. 0/8), "
                        f"got {args.shard!r}") from None
    return args


def validate(args):
    """As flags.validate, and the grid's own flags: ({model name: Config}, device)."""
    configs, device = flags.validate(args)
    for k in ("seeds", "jobs"):
        if getattr(args, k) <= 0:
            raise UserError(f"--{k} must be positive, got {getattr(args, k)}")
    if args.flops_match:
        flags.model_config(args, flags.expand(args.flops_match, LADDER, "model")[0])
    eval_budgets = flags.comma_list(args.eval_budgets, "--eval_budgets")
    budgets = argparse.Namespace(**{**vars(args), "eval_budgets": eval_budgets})
    for config in configs.values():
        evaluate.check_test_budgets(config, budgets)
    return configs, device


def matched_iters(args, task, name):
    """With --flops_match, a run's iterations: the ratio of its training FLOPs (ceiling) to
    the reference model's, times max_iters. Compute-matched by construction."""
    if not args.flops_match:
        return args.max_iters
    T = tasks.seq_len(task, args.n_digits)
    with torch.device("meta"):  # no memory, no init: only the FLOP count is wanted
        ref, own = (Model(flags.model_config(args, n)).compute_stats(T)["train_flops_per_token"]
                    for n in (args.flops_match, name))
    return round(args.max_iters * ref / own)


def one_run(args, run):
    """The settings of one run of the grid, as train.py would parse its command."""
    task, name, seed = run
    return argparse.Namespace(**{**vars(args), "model": name, "task": task, "seed": seed,
                                 "max_iters": matched_iters(args, task, name)})


def passed_on(args, drop):
    """The grid's flags as parsed, less those in drop."""
    return flags.command_line({k: v for k, v in args.given.items() if k not in drop})


def command(args, run, resume=False, threads=0):
    """The train.py command of one run: the grid's flags, less its own, with the run's."""
    this = one_run(args, run)
    drop = OWN | ({"max_iters"} if args.flops_match else set())
    return (["python", "train.py"] + passed_on(args, drop)
            + ["--model", this.model, "--task", this.task, "--seed", str(this.seed)]
            + (["--max_iters", str(this.max_iters)] if args.flops_match else [])
            + (["--resume"] if resume else []) + (["--threads", str(threads)] if threads else []))


def compare(args, configs, device):
    """Run this shard's runs that are not finished, N at a time, then print the tables."""
    runs = flags.plan(args)
    mine = shard(runs, args.shard_k, args.shard_n)
    records.read_records(args.out_dir)  # a damaged record is refused before any work
    todo = []
    for run in mine:  # every run checked before any trains
        this = one_run(args, run)
        ckpt = os.path.join(args.out_dir, run_name(*run), "ckpt.pt")
        this.resume = args.resume and os.path.exists(ckpt)
        prior = resume.prior(this, configs[run[1]], train.DEFAULTS)
        if prior.action != "skip":
            todo.append((run, prior.action == "resume"))
    jobs = min(args.jobs, len(todo)) or 1
    threads = args.threads or (max(1, cpu_threads() // jobs) if jobs > 1 else 0)
    part = f" (shard {args.shard_k}/{args.shard_n} of {len(runs)})" if args.shard_n > 1 else ""
    print(f"{len(mine)} run(s){part}, {len(mine) - len(todo)} finished already; {jobs} at a time"
          + (f", {threads} thread(s) each" if threads else ""), flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    t0, left = time.time(), execute(args, todo, jobs, threads, device)
    recorded = records.read_records(args.out_dir)
    shown, budgets = show(args, recorded, runs)
    if args.plot:
        figures.plot(shown, args.out_dir)
        evaluate.plot_budgets(budgets, args.out_dir, shown)
    print(f"\nrecords in {args.out_dir}/<run>/record.json; "
          f"views {args.out_dir}/results.json and results.md "
          f"({fmt_time(time.time() - t0)} in all)")
    for run, why in left:
        saved = os.path.exists(os.path.join(args.out_dir, run_name(*run), "ckpt.pt"))
        print(f"{run_name(*run)} did not finish ({why}); "
              f"to go on with it: {shlex.join(command(args, run, saved))}", file=sys.stderr)
    failed = any(recorded.get(run_name(*r), {}).get("status") == "failed" for r, _ in todo)
    if any(why.startswith("stopped") for _, why in left):
        return 130
    if failed or left:
        return 1
    return 0


def execute(args, todo, jobs, threads, device):
    """Run the commands of todo, `jobs` at a time; [(run, why)] for those that did not finish."""
    slots, running, stopping, left = queue.Queue(), {}, [], []
    for k in range(jobs):
        slots.put(k)
    gpus = torch.cuda.device_count() if device == "cuda" else 0

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
        print(f"[{i + 1}/{len(todo)}] start {run_name(*run)}"
              + (f" (log: {log})" if jobs > 1 else "") + f"\n  {shlex.join(cmd)}", flush=True)
        gpu = {"CUDA_VISIBLE_DEVICES": str(k % gpus)} if gpus > 1 else {}
        env = {**os.environ, "PYTHONUNBUFFERED": "1", flags.STARTED_BY: "grid.py", **gpu}
        quiet = subprocess.DEVNULL if jobs > 1 else None  # the run writes its own train.log
        try:  # a session of its own: a terminal's Ctrl-C reaches it once, from here
            argv = [sys.executable, os.path.join(HERE, "train.py"), *cmd[2:]]
            p = running[run] = subprocess.Popen(argv, env=env, stdout=quiet, stderr=quiet,
                                                start_new_session=True)
            if stopping:
                p.send_signal(signal.SIGINT)
            code = p.wait()
            if code == 0 and args.eval_budgets and not stopping:
                eval_cmd = ([sys.executable, os.path.join(HERE, "evaluate.py")]
                            + passed_on(args, OWN - {"eval_budgets", "step_extend"})
                            + ["--model", run[1], "--task", run[0], "--seed", str(run[2])]
                            + (["--threads", str(threads)] if threads else []))
                code = subprocess.call(eval_cmd, env=env, stdout=quiet, stderr=quiet)
            return code
        finally:
            running.pop(run, None)
            slots.put(k)

    t0, done = time.time(), 0
    with handling(on_signal), concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(start, i, run, resume): run
                   for i, (run, resume) in enumerate(todo)}
        for f in concurrent.futures.as_completed(futures):
            run, code = futures[f], f.result()
            path = os.path.join(args.out_dir, run_name(*run), "record.json")
            record = records.read_record(path)
            if record is None:  # killed, stopped, or never started
                if code is None:
                    why = "not started"
                elif stopping:
                    why = f"stopped by {stopping[0]}"
                elif code < 0:
                    why = f"killed by {signal.Signals(-code).name}"
                else:
                    why = f"exit status {code}"
                left.append((run, why))
                continue
            done += 1
            eta = (time.time() - t0) / done * (len(todo) - done - len(left))
            print(f"[{done}/{len(todo)} done] {summary(record)} | eta {fmt_time(eta)}",
                  flush=True)
            # from every process's records, not only this one's
            write_views(args.out_dir, records.read_records(args.out_dir))
    return [(run, why) for run, _ in todo for r, why in left if r == run]  # in the grid's order


def show(args, recorded, runs=None):
    """Print the tables of these runs' records and test-time budgets (of every one in out_dir
    where runs is None); ({run: record}, budgets) shown, for the figures."""
    shown, budgets = recorded, records.read_test_budgets(args.out_dir)
    if runs is not None:
        shown = {run_name(*r): recorded[run_name(*r)] for r in runs if run_name(*r) in recorded}
        budgets = [e for e in budgets if run_name(e["task"], e["name"], e["seed"]) in shown]
    report.print_tables(shown.values())
    evaluate.print_budget_tables(budgets)
    return shown, budgets


def write_views(out_dir, recorded):
    """results.json and results.md of these records, with the test-time budgets' tables."""
    budgets = evaluate.budget_markdown(records.read_test_budgets(out_dir))
    report.write_views(out_dir, recorded, budgets)


def view(args):
    """--report: the tables of out_dir's records, or of the grid the flags name with the
    commands of the runs it lacks; results.json and results.md rebuilt from every record."""
    recorded = records.read_records(args.out_dir)
    if not recorded:
        raise UserError(f"no run records in {args.out_dir} (they are <out_dir>/<run>/record.json)")
    asked = any(k in args.given for k in ("model", "task", "seed", "seeds"))
    runs = flags.plan(args) if asked else None
    shown, budgets = show(args, recorded, runs)
    missing = [r for r in runs or [] if recorded.get(run_name(*r), {}).get("status") != "ok"]
    if missing:
        print(f"\n{len(missing)} of {len(runs)} run(s) of this grid are missing or failed; "
              "to run them:")
    for run in missing:
        state = "failed" if run_name(*run) in recorded else "missing"
        print(f"  {state}: {shlex.join(command(args, run))}")
    write_views(args.out_dir, recorded)
    if args.plot:
        figures.plot(shown, args.out_dir)
        evaluate.plot_budgets(budgets, args.out_dir, shown)
    print(f"\nwrote {args.out_dir}/results.json and results.md from {len(recorded)} record(s)")
    return 0


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.report:
            return view(args)
        return compare(args, *validate(args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
