"""
The comparison: a grid of runs (tasks x models x seeds), run in parallel, resumable,
spread over machines, and the tables and figures made from its records.

    python train.py --model all --task all --seeds 3 --jobs 2      # 63 runs, 2 worker processes
    python train.py --model all --task all --seeds 3 --shard 0/8   # this machine's eighth of them
    python train.py --report --out_dir out                         # tables from every record in out/

Each finished run writes its record, atomically, as <out_dir>/<task>_<model>_s<seed>/record.json,
beside its log (train.log) and checkpoint. results.json and results.md are views rebuilt
from those records, never the only copy, so any number of processes (a job array on
several machines sharing one file system included) can write into one out_dir at once.
"""

import contextlib
import glob
import json
import multiprocessing as mp
import os
import queue
import re
import shlex
import statistics
import sys
import time

import torch

import train
from artrm import RUNGS, Config, Model
from train import UserError, fmt_time, run_name

# -----------------------------------------------------------------------------
# The run list, the same on every machine, and its shards.

def plan(args):
    """Every run of the grid, in a fixed order: (task, model name, seed)."""
    return [(t, m, s) for t in args.tasks for m in args.models for s in range(args.seed, args.seed + args.seeds)]


def shard(runs, k, n):
    """The K-th of N disjoint slices; round robin, so that each gets a fair mix of rungs."""
    return runs[k::n]

# -----------------------------------------------------------------------------
# Records: one file per finished run; results.json / results.md are views of them.

RECORD_KEYS = {"task", "name", "model", "seed", "status", "config"}


def read_records(out_dir):
    """{run directory, relative to out_dir: record} for every record under out_dir (a run's
    directory is its run name; an experiment may keep grids in folders of its own below)."""
    records = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "**", "record.json"), recursive=True)):
        try:
            with open(path) as f:
                r = json.load(f)
            assert isinstance(r, dict) and RECORD_KEYS <= r.keys()
        except (ValueError, AssertionError, OSError):
            raise UserError(f"{path} is not a run record; move it away (it is left as it is)") from None
        records[os.path.relpath(os.path.dirname(path), out_dir)] = r
    return records


def read_test_budgets(out_dir):
    """The test-budget evaluations in out_dir (<run>/test_budgets.json, see --eval_budgets)."""
    entries = []
    for path in sorted(glob.glob(os.path.join(out_dir, "**", "test_budgets.json"), recursive=True)):
        try:
            with open(path) as f:
                e = json.load(f)
            assert isinstance(e, dict) and {"task", "name", "seed", "train_budget", "budgets"} <= e.keys()
        except (ValueError, AssertionError, OSError):
            raise UserError(f"{path} is not a test-budget record; move it away (it is left as it is)") from None
        entries.append(e)
    return entries


def write_record(out_dir, record):
    run_dir = os.path.join(out_dir, run_name(record["task"], record["name"], record["seed"]))
    os.makedirs(run_dir, exist_ok=True)
    train.write_json(os.path.join(run_dir, "record.json"), record)


def check_legacy(out_dir):
    """An earlier artrm kept its records only in results.json. Where out_dir holds such a file
    and no record.json yet, refuse to overwrite it with a view, rather than lose them."""
    path = os.path.join(out_dir, "results.json")
    if not os.path.exists(path) or read_records(out_dir):  # beside records, results.json is their view
        return
    try:
        with open(path) as f:
            listed = json.load(f)
        assert isinstance(listed, list) and all(isinstance(r, dict) and RECORD_KEYS <= r.keys() for r in listed)
    except (ValueError, AssertionError, OSError):
        raise UserError(f"{path} is not a JSON list of run records; move it away (it is left as it is)") from None
    if listed:
        raise UserError(f"{path} holds {len(listed)} record(s) of an earlier artrm, with no record.json of "
                        f"their own; move it away, or use another --out_dir")


def write_views(out_dir, records):
    """results.json (every record, in ladder order) and results.md (the tables), rebuilt whole."""
    ordered = sorted(records.values(), key=lambda r: (r["task"], order_key(name_of(r)), r["seed"]))
    train.write_json(os.path.join(out_dir, "results.json"), ordered)
    md = ["# Results", "", describe_records(ordered), ""]
    for task, header, rows, chart in tables(ordered):
        md += [f"## {task}", "", format_table(header, rows, markdown=True), "",
               "Accuracy by output position (first digit left; ' '=0, █=1; chance is 0.10):", "",
               "```", chart, "```", ""]
    for task, n, header, rows in budget_tables(read_test_budgets(out_dir)):
        md += [f"## {task}: thinking longer or shorter at test time (L={n})", "",
               "char_acc, mean±std over seeds, and the block passes executed per token (at evaluation)", "",
               format_table(header, rows, markdown=True), ""]
    train.atomic_write(os.path.join(out_dir, "results.md"), lambda f: f.write("\n".join(md).encode()))

# -----------------------------------------------------------------------------
# Running the grid: in this process, or in --jobs worker processes.

class Tee:
    """A run's output goes to its train.log, and to the console when one process runs the grid."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def run_one(args, run, device, console):
    """Train one run of the grid, its output in its train.log; return its record (a failed
    run gives a 'failed' record and the grid goes on)."""
    task, name, seed = run
    this = train.run_args(args, task, name)
    run_dir = os.path.join(args.out_dir, run_name(task, name, seed))
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "train.log"), "a", buffering=1) as log:  # line by line: tail -f works
        out, err = (Tee(log, *([stream] if console else [])) for stream in (sys.stdout, sys.stderr))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                record = train.train_run(this, task, name, seed, device)
            except (UserError, train.Interrupted):
                raise
            except Exception as e:  # a diverged (or broken) run is recorded, the grid goes on
                if not isinstance(e, FloatingPointError):
                    import traceback
                    traceback.print_exc()
                print(f"run {run_name(*run)} failed: {e}", file=sys.stderr)
                record = {"model": name.split("+")[0], "name": name, "task": task, "seed": seed,
                          "status": "failed", "error": f"{type(e).__name__}: {e}", "config": train.run_config(this)}
    write_record(args.out_dir, record)
    return record


def worker(k, args, device, threads, todo, events):
    """Worker k of --jobs: takes runs from `todo` until it is empty, says what it does on `events`."""
    torch.set_num_threads(threads)
    if device == "cuda":
        torch.cuda.set_device(k % torch.cuda.device_count())  # worker k uses GPU k mod count
    try:
        while True:
            try:
                i, run = todo.get_nowait()
            except queue.Empty:
                return
            events.put(("start", i, None))
            try:
                events.put(("done", i, run_one(args, run, device, console=False)))
            except (UserError, train.Interrupted) as e:
                events.put(("stopped", i, str(e)))
                return
    except KeyboardInterrupt:  # Ctrl-C between two runs: nothing to save
        return


def compare(args, device):
    """Run the grid's runs that are not finished (this shard's, with --shard) and print the tables."""
    train.check_writable(args.out_dir)
    runs = plan(args)
    mine = shard(runs, args.shard_k, args.shard_n)
    done = read_records(args.out_dir)  # refuse a damaged record before any work
    check_legacy(args.out_dir)
    todo = [run for run in mine if not finished(args, run, done)]  # checks every run before any work
    for run in todo:
        train.resume_point(train.run_args(args, run[0], run[1]), *run)  # each checkpoint, before any run starts
    threads = args.threads or max(1, torch.get_num_threads() // args.jobs)
    jobs = min(args.jobs, len(todo)) or 1
    part = f" (shard {args.shard_k}/{args.shard_n} of {len(runs)})" if args.shard_n > 1 else ""
    print(f"device {device}, torch {torch.__version__}, preset {args.preset}: {len(mine)} run(s){part}, "
          f"{len(mine) - len(todo)} finished already, {jobs} process(es) x {threads} thread(s)")
    print("config: " + json.dumps(train.run_config(args)))
    os.makedirs(args.out_dir, exist_ok=True)
    t0, failed = time.time(), 0

    def finish(i, record):
        nonlocal failed
        done[run_name(*todo[i])] = record
        failed += record["status"] != "ok"
        n = sum(run_name(*r) in done for r in todo)
        eta = (time.time() - t0) / n * (len(todo) - n)
        print(f"[{n}/{len(todo)}] {summary(record)} | eta {fmt_time(eta)}", flush=True)
        write_views(args.out_dir, read_records(args.out_dir))  # every process's records, not only ours

    if jobs == 1:
        torch.set_num_threads(threads)
        for i, run in enumerate(todo):
            print(f"\n[{i + 1}/{len(todo)}] start {run_name(*run)}", flush=True)
            finish(i, run_one(args, run, device, console=True))
    else:
        run_parallel(args, device, todo, jobs, threads, finish)
    grid = {run_name(*r): done[run_name(*r)] for r in runs if run_name(*r) in done}
    print_tables(grid.values())
    in_grid = [e for e in read_test_budgets(args.out_dir) if run_name(e["task"], e["name"], e["seed"]) in grid]
    print_budget_tables(in_grid)
    if args.plot:
        plot(grid, args.out_dir)
        plot_budgets(in_grid, args.out_dir)
    print(f"\nrecords in {args.out_dir}/<run>/record.json; views {args.out_dir}/results.json and results.md "
          f"({fmt_time(time.time() - t0)} in all)")
    return 1 if failed else 0


def run_parallel(args, device, todo, jobs, threads, finish):
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no inherited threads or CUDA state
    tasks_q, events = ctx.Queue(), ctx.Queue()
    for i, run in enumerate(todo):
        tasks_q.put((i, run))
    procs = [ctx.Process(target=worker, args=(k, args, device, threads, tasks_q, events)) for k in range(jobs)]
    for p in procs:
        p.start()
    left, stopped = set(range(len(todo))), []
    try:
        while left and not stopped:
            try:
                kind, i, payload = events.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):  # a worker killed from outside (OOM, kill -9)
                    raise UserError(f"the worker processes ended with {len(left)} run(s) not done: "
                                    + ", ".join(run_name(*todo[i]) for i in sorted(left)))
                continue
            if kind == "start":
                print(f"start {run_name(*todo[i])} (log: {os.path.join(args.out_dir, run_name(*todo[i]), 'train.log')})",
                      flush=True)
            elif kind == "done":
                left.discard(i)
                finish(i, payload)
            else:
                stopped.append(payload)
    except KeyboardInterrupt:  # every worker got the Ctrl-C too: each saves its run's checkpoint
        stopped.append("interrupted")
    for p in procs:
        p.join()
    while not events.empty():  # runs that finished or stopped while we were stopping
        kind, i, payload = events.get()
        if kind == "done":
            finish(i, payload)
        elif kind == "stopped":
            stopped.append(payload)
    if stopped:
        raise train.Interrupted(f"stopped with {len(left)} run(s) not done; their checkpoints are in their run "
                                f"directories. Resume with: {train.resume_command(args)}")


def finished(args, run, done):
    """Whether a run of the grid is finished in out_dir (then it is skipped). A run is named by
    task, model and seed; one recorded with settings that change what it trains is an error."""
    task, name, seed = run
    record = done.get(run_name(*run))
    where = os.path.join(args.out_dir, run_name(*run))
    asked = train.run_config(train.run_args(args, task, name))
    if record is None or record["status"] != "ok":
        if not args.resume and os.path.exists(os.path.join(where, "ckpt.pt")):
            if record is None:  # interrupted: never start it over silently
                raise UserError(f"{where} holds the checkpoint of an unfinished run; add --resume to continue it, "
                                f"or move it away to start over")
        elif args.resume and len(plan(args)) == 1 and not os.path.exists(os.path.join(where, "ckpt.pt")):
            raise UserError(f"--resume: no checkpoint at {os.path.join(where, 'ckpt.pt')}")
        return False
    changes = train.setting_changes(record["config"], asked)
    train.check_same_run(changes, where, resume_hint=not args.resume)
    if changes:  # --resume with new values of RESUMABLE settings: continue it from its checkpoint
        if not os.path.exists(os.path.join(where, "ckpt.pt")):
            raise UserError(f"{where} is finished but has no checkpoint to continue from with new "
                            f"{', '.join(changes)}; use another --out_dir")
        return False
    print(f"{run_name(*run)} is finished in {where}; skipped")
    return True


def summary(record):
    """One line of a run's key numbers."""
    name = run_name(record["task"], record["name"], record["seed"])
    if record["status"] != "ok":
        return f"{name} FAILED: {record.get('error', '')}"
    L = str(record["n_digits"])
    ev = record["eval"].get(L, {})
    return (f"{name}: char_acc {ev.get('char_acc', float('nan')):.3f} seq_acc {ev.get('seq_acc', float('nan')):.3f} "
            f"at L={L} | loss {record['final_loss']:.3f} | passes {record['executed_block_passes_train']:.1f}/"
            f"{record['block_passes']} | {fmt_time(record['wall_s'])}")

# -----------------------------------------------------------------------------
# --eval_only: saved checkpoints of a grid, evaluated again (at new lengths or test budgets).

def eval_only(args, device):
    """Evaluate saved checkpoints (--ckpt FILE, or each run's own) with their own config."""
    runs = plan(args)
    paths = [args.ckpt] if args.ckpt else [os.path.join(args.out_dir, run_name(*run), "ckpt.pt") for run in runs]
    for path, (task, _, _) in zip(paths, runs):
        ckpt = train.load_checkpoint(path)
        task = ckpt.get("task", task)  # a checkpoint knows its task
        model = restore_model(ckpt, path, device)
        train.check_fits(task, args.eval_lengths, model.config.block_size, "the checkpoint's block_size")
        train.check_test_budgets(model.config, args.eval_budgets, f"{path}: ")
        print(f"{path}: {model.config.model} on {task}, iter {ckpt['iter']}")
        res = train.evaluate(model, task, args.eval_lengths, args.eval_examples, device, args.temperature, show=3)
        for n, r in res.items():
            print(f"  L={n}: char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f} "
                  f"pos_acc {' '.join(f'{v:.2f}' for v in r['pos_acc'])}")
        if args.eval_budgets:
            train.evaluate_budgets(model, task, ckpt.get("seed"), args, device, path, ckpt["iter"])
    return 0


def restore_model(ckpt, path, device):
    try:
        model = Model(Config(**ckpt["config"])).to(device)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} was written by an artrm whose model differs from this one "
                        f"({str(e).splitlines()[0][:160]})") from None
    return model


# -----------------------------------------------------------------------------
# --report: the tables (and figures) of what is recorded, and what a grid still lacks.

def report(args):
    records = read_records(args.out_dir)
    if not records:
        raise UserError(f"no run records in {args.out_dir} (they are <out_dir>/<run>/record.json)")
    check_legacy(args.out_dir)
    names_grid = {"model", "task", "seed", "seeds"} & set(args.given)
    budgets = read_test_budgets(args.out_dir)
    if names_grid:  # only the grid asked for, and what it lacks
        runs = plan(args)
        shown = {run_name(*r): records[run_name(*r)] for r in runs if run_name(*r) in records}
        budgets = [e for e in budgets if (e["task"], e["name"], e["seed"]) in set(runs)]
        print_tables(shown.values())
        print_budget_tables(budgets)
        missing = [r for r in runs if records.get(run_name(*r), {}).get("status") != "ok"]
        if missing:
            print(f"\n{len(missing)} of {len(runs)} run(s) of this grid are missing or failed; to run them:")
            rest = strip_flags(args.argv, {"--report", "--model", "--task", "--seed", "--seeds", "--shard", "--plot"})
            for task, name, seed in missing:
                state = "failed" if run_name(task, name, seed) in records else "missing"
                print(f"  {state}: python train.py {' '.join(rest)} --model {name} --task {task} --seed {seed}")
    else:
        shown = records
        print_tables(shown.values())
        print_budget_tables(budgets)
    write_views(args.out_dir, records)
    if args.plot:
        plot(shown, args.out_dir)
        plot_budgets(budgets, args.out_dir)
    print(f"\nwrote {args.out_dir}/results.json and results.md from {len(records)} record(s)")
    return 0


def strip_flags(argv, drop):
    """argv without the flags in drop (and their values), shell-quoted."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a.split("=")[0] in drop:
            skip = "=" not in a and a not in ("--report", "--plot")
        else:
            out.append(shlex.quote(a))
    return out

# -----------------------------------------------------------------------------
# Tables: one per task, one row per model (with the settings that tell its rows apart).

def name_of(record):
    return record.get("name", record["model"])


def order_key(name):
    """Ladder order, each rung's extensions after it."""
    return RUNGS.index(name.split("+")[0]), name


EVALUATION = set(train.RESUMABLE) - {"max_iters"}  # how a run was evaluated or logged: not a row of its own


def row_keys(records):
    """{id(record): row label}: the model name, plus the settings in which the task's
    records differ (say budget=2 and budget=12 of one rung), so different runs never share a row."""
    keys = sorted({k for r in records for k in r["config"]})
    varying = [k for k in keys if k not in EVALUATION and len({json.dumps(r["config"].get(k)) for r in records}) > 1]
    return {id(r): " ".join([name_of(r)] + [f"{k}={r['config'].get(k)}" for k in varying]) for r in records}


def natural(text):
    """Sort key that puts budget=2 before budget=12 and step2 before step10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def groups(records):
    """[(row label, records)] in ladder order."""
    label = row_keys(records)
    rows = {}
    for r in sorted(records, key=lambda r: (order_key(name_of(r)), natural(label[id(r)]), r["seed"])):
        rows.setdefault(label[id(r)], []).append(r)
    return list(rows.items())


def at_training_length(record):
    """A record's evaluation at the operand length it trained at."""
    return record["eval"][str(record["n_digits"])]


def mean_std(values):
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values, digits=3):
    """mean±std; one value alone has no spread to show (not ±0)."""
    values = list(values)
    if not values:
        return ""
    m, s = mean_std(values)
    return f"{m:.{digits}f}" + (f"±{s:.{digits}f}" if len(values) > 1 else "")


def quarters(pos_acc):
    """Accuracy by output quarter, Q1 = earliest digits."""
    n = len(pos_acc)
    return [statistics.mean(pos_acc[q * n // 4: max((q + 1) * n // 4, q * n // 4 + 1)]) for q in range(4)]


def table_rows(records):
    """One row per model, each value mean±std over its seeds (failed runs counted apart)."""
    lengths = sorted({int(n) for r in records if r["status"] == "ok" for n in r["eval"]})
    header = ["model", "seeds", "params", "passes train/eval (budget)", "grad", "train MFLOP/tok exec (ceiling)",
              "wall s", "loss"] + [f"{k} L={n}" for n in lengths for k in ("char", "seq")]
    rows = []
    for label, group in groups(records):
        rs = [r for r in group if r["status"] == "ok"]
        bad = len(group) - len(rs)
        if not rs:
            rows.append([label, f"0 ({bad} failed)"] + [""] * (len(header) - 2))
            continue
        mean = lambda key: statistics.mean(r[key] for r in rs)
        row = [label, f"{len(rs)}" + (f" ({bad} failed)" if bad else ""), f"{rs[0]['params']:,}",
               f"{mean('executed_block_passes_train'):.1f}/{mean('executed_block_passes_eval'):.1f} "
               f"({rs[0]['block_passes']})", str(rs[0]["grad_block_passes"]),
               f"{mean('executed_train_flops_per_token') / 1e6:.2f} ({rs[0]['train_flops_per_token'] / 1e6:.2f})",
               f"{mean('wall_s'):.0f}", pm((r["final_loss"] for r in rs), 3)]
        for n in lengths:
            row += [pm(r["eval"][str(n)][k] for r in rs if str(n) in r["eval"]) for k in ("char_acc", "seq_acc")]
        rows.append(row)
    return header, rows


def format_table(header, rows, markdown=False):
    if markdown:
        return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header)] + rows)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows)


def mean_pos_acc(runs):
    """Accuracy by output position at each run's training length, averaged over runs ([] if none)."""
    accs = [at_training_length(r)["pos_acc"] for r in runs
            if r["status"] == "ok" and str(r["n_digits"]) in r["eval"]]
    return [statistics.mean(v) for v in zip(*accs)] if len({len(a) for a in accs}) == 1 else []


def position_chart(records):
    bars = " ▁▂▃▄▅▆▇█"
    lines = []
    width = max((len(label) for label, _ in groups(records)), default=0)
    for label, group in groups(records):
        acc = mean_pos_acc(group)
        if acc:
            q = " ".join(f"{v:.2f}" for v in quarters(acc))
            lines.append(f"{label:<{width}} |{''.join(bars[round(a * 8)] for a in acc)}|  Q1..Q4 {q}")
    return "\n".join(lines)


def tables(records):
    """[(task, header, rows, position chart)], tasks in the paper's order."""
    out = []
    for task in train.TASKS:
        rs = [r for r in records if r["task"] == task]
        if rs:
            out.append((task, *table_rows(rs), position_chart(rs)))
    return out


def describe_records(records):
    """What the runs share (their settings), where they ran, and with which code."""
    shared = {k: v for k, v in records[0]["config"].items()
              if all(json.dumps(r["config"].get(k)) == json.dumps(v) for r in records)} if records else {}
    where = sorted({f"{r.get('hardware', '?')}, torch {r.get('torch', '?')}" for r in records if r["status"] == "ok"})
    code = sorted({r.get("code", "?") for r in records if r["status"] == "ok"})
    return (f"{len(records)} run(s). Settings shared by all: "
            + ", ".join(f"{k}={v}" for k, v in shared.items())
            + f".  \nRan on: {'; '.join(where)}. Code: {', '.join(code)}. Wall s is training time, "
              f"evaluation excluded; chance is 0.10 per digit.")


def print_tables(records):
    records = list(records)
    if not records:
        return
    print("\n" + describe_records(records).replace("  \n", "\n"))
    for task, header, rows, chart in tables(records):
        print(f"\n== {task}: mean±std over seeds; passes are per token per forward\n")
        print(format_table(header, rows))
        print(f"\naccuracy by output position at the training length (first digit left; ' '=0, █=1)\n{chart}")

def budget_tables(entries):
    """[(task, length, header, rows)]: per model (row) and test budget (column), char_acc
    mean±std over seeds and the passes executed, from test_budgets.json records."""
    out = []
    for task in train.TASKS:
        es = [e for e in entries if e["task"] == task]
        lengths = sorted({int(n) for e in es for b in e["budgets"].values() for n in b})
        budgets = sorted({int(b) for e in es for b in e["budgets"]})
        for n in lengths:
            header = ["model", "trained at", "seeds"] + [f"budget {b}" for b in budgets]
            rows = []
            for label, group in budget_groups(es):
                row = [label, str(group[0]["train_budget"]), str(len(group))]
                for b in budgets:
                    cells = [e["budgets"][str(b)][str(n)] for e in group if str(n) in e["budgets"].get(str(b), {})]
                    row.append(f"{pm(c['char_acc'] for c in cells)} ({statistics.mean(c['passes'] for c in cells):.1f})"
                               if cells else "")
                rows.append(row)
            out.append((task, n, header, rows))
    return out


def budget_groups(entries):
    rows = {}
    for e in sorted(entries, key=lambda e: (order_key(e["name"]), e["train_budget"], e["seed"] or 0)):
        rows.setdefault(f"{e['name']} ({e['extend']})", []).append(e)
    return list(rows.items())


def print_budget_tables(entries):
    for task, n, header, rows in budget_tables(entries):
        print(f"\n== {task}: char_acc at L={n} when thinking longer or shorter at test time "
              f"(passes executed per token in brackets)\n")
        print(format_table(header, rows))

# -----------------------------------------------------------------------------
# Figures (optional: matplotlib).

def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("--plot needs matplotlib, which is not installed: pip install matplotlib", file=sys.stderr)
        return None


def style(i):
    """Line style i of a figure: marker and dash differ too, so lines stay apart in greyscale."""
    return dict(marker="os^vDP*Xh<>p"[i % 12], linestyle=["-", "--", ":", "-."][i % 4])


# The paper's char_acc at L=10 (budget 24, d=384), where it gives a number ("solved" = 1.0).
PAPER_CHAR_ACC = {
    "addition": {"dense": 0.799, "iter": 0.544, "iter_step": 0.558, "ut": 0.658, "dual_ut": 0.835,
                 "nested_ut": 0.14, "ar_trm": 0.125},
    "copy": {"dense": 1.0, "iter": 1.0, "iter_step": 1.0, "ut": 1.0, "dual_ut": 1.0, "ar_trm": 0.110},
    "reverse": {"dense": 1.0, "iter": 1.0, "iter_step": 1.0, "ut": 1.0, "dual_ut": 1.0, "ar_trm": 0.100},
}


def save(fig, path):
    train.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    print(f"wrote {path}")

def plot(experiment, out_dir):
    """The figures of {run directory relative to out_dir: record}."""
    plt = pyplot()
    if plt is None:
        return
    records = list(experiment.values())
    for task in train.TASKS:
        rs = [r for r in records if r["task"] == task and r["status"] == "ok"]
        if not rs:
            continue
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        rows = groups(rs)
        for i, (label, group) in enumerate(rows):
            acc = mean_pos_acc(group)
            shift = 0.3 * (i - (len(rows) - 1) / 2) / max(len(rows), 1)  # side by side, so equal lines stay visible
            if acc:
                ax1.plot([p + 1 + shift for p in range(len(acc))], acc, alpha=0.8, label=label, **style(i))
            h = group[0]["history"]
            flops = [e["iter"] / group[0]["iters"] * group[0]["executed_train_flops_per_token"]
                     * group[0]["train_tokens"] for e in h]
            acc_h = [statistics.mean(r["history"][i]["char_acc"] for r in group if len(r["history"]) > i)
                     for i in range(len(h))]
            ax2.plot(flops, acc_h, markersize=4, alpha=0.8, label=label, **style(i))
        ax1.set(title=f"{task}: accuracy by output position (training length)",
                xlabel="output position (first digit = 1; models drawn side by side)",
                ylabel="accuracy (mean over seeds)", ylim=(0, 1.02))
        ax2.set(title=f"{task}: char_acc during training", xlabel="training FLOPs spent so far (executed)",
                ylabel="char_acc at the training length", ylim=(0, 1.02))
        ax2.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax1.legend(fontsize=7)
        ax2.legend(fontsize=7)
        fig.tight_layout()
        save(fig, os.path.join(out_dir, f"{task}.png"))
        plt.close(fig)
    plot_ladder(records, out_dir, plt)
    plot_flops(records, out_dir, plt)
    plot_sweep(experiment, out_dir, plt)


def plot_flops(records, out_dir, plt):
    """flops.png: char_acc at the training length against the training FLOPs each model
    spent (executed, whole run), mean and seed spread on both axes, one panel per task."""
    rs = [r for r in records if r["status"] == "ok"]
    tasks_here = [t for t in train.TASKS if any(r["task"] == t for r in rs)]
    if not tasks_here:
        return
    fig, axes = plt.subplots(1, len(tasks_here), figsize=(5.5 * len(tasks_here), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks_here):
        for i, (label, group) in enumerate(groups([r for r in rs if r["task"] == task])):
            flops = [r["executed_train_flops_per_token"] * r["train_tokens"] for r in group]
            acc = [at_training_length(r)["char_acc"] for r in group]
            ax.errorbar(statistics.mean(flops), statistics.mean(acc), xerr=mean_std(flops)[1], yerr=mean_std(acc)[1],
                        capsize=3, markersize=7, label=label, **{**style(i), "linestyle": "none"})
        ax.axhline(0.1, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{task}: accuracy against training compute", xlabel="training FLOPs spent (executed, whole run)",
               ylabel="char_acc at the training length", ylim=(0, 1.05))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 5), 1, 1))
    save(fig, os.path.join(out_dir, "flops.png"))
    plt.close(fig)


def plot_ladder(records, out_dir, plt):
    """ladder.png: char_acc at the training length of every model on every task, mean and
    seed spread, with the paper's value (at its own setting) marked beside it."""
    rs = [r for r in records if r["status"] == "ok"]
    labels = [label for label, _ in groups(rs)]
    if not labels:
        return
    tasks_here = [t for t in train.TASKS if any(r["task"] == t for r in rs)]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.4 * len(labels) + 2), 4.8))
    width = 0.8 / len(tasks_here)
    for j, task in enumerate(tasks_here):
        by_label = dict(groups([r for r in rs if r["task"] == task]))
        xs = [i + (j - (len(tasks_here) - 1) / 2) * width for i in range(len(labels))]
        accs = [[at_training_length(r)["char_acc"] for r in by_label.get(label, [])] for label in labels]
        ax.bar(xs, [statistics.mean(a) if a else 0 for a in accs], width, yerr=[mean_std(a)[1] if a else 0 for a in accs],
               capsize=2, color=["0.25", "0.55", "0.85"][j % 3], edgecolor="black", hatch=["", "//", ".."][j % 3],
               label=f"{task} (artrm, mean ± std over seeds)")
        paper = [(x, PAPER_CHAR_ACC[task].get(label)) for x, label in zip(xs, labels)]
        px = [(x, v) for x, v in paper if v is not None]
        if px:
            ax.scatter(*zip(*px), marker="_", s=300, linewidths=2.5, color="C3", zorder=3,
                       label="paper (L=10, budget 24, d=384)" if j == 0 else None)
    ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance (0.10)")
    ax.set_xticks(range(len(labels)), [label.replace(" ", "\n") for label in labels], fontsize=8)
    ax.set_title("char_acc of every model at the training length", pad=36)
    ax.set(ylabel="char_acc", ylim=(0, 1.1))
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "ladder.png"))
    plt.close(fig)


def sweep(records):
    """The data of sweep.png, for an experiment kept as one folder per step under out_dir
    ({run directory relative to out_dir: record}, as read_records gives): the folders in
    natural order, each with the settings it changes from the folder before, and per task
    {model: [[char_acc at the training length, one per seed] per folder]}."""
    by_folder = {}
    for path, r in records.items():
        if r["status"] == "ok" and os.sep in path:
            by_folder.setdefault(path.split(os.sep)[0], []).append(r)
    folders, before = [], {}
    for folder in sorted(by_folder, key=natural):
        configs = [r["config"] for r in by_folder[folder]]
        shared = {k: v for k, v in configs[0].items() if k not in EVALUATION and all(c.get(k) == v for c in configs)}
        folders.append((folder, " ".join(f"{k}={v}" for k, v in shared.items() if before and before.get(k) != v)))
        before = shared
    acc = {}
    for i, (folder, _) in enumerate(folders):
        for r in by_folder[folder]:
            acc.setdefault(r["task"], {}).setdefault(name_of(r), [[] for _ in folders])[i].append(
                at_training_length(r)["char_acc"])
    return folders, acc


def plot_sweep(records, out_dir, plt):
    """sweep.png: char_acc at the training length of each model along the experiment's
    folders (one step each), mean and seed spread, with the paper's value (at its own setting) last."""
    folders, acc = sweep(records)
    if len(folders) < 2:
        return
    tasks_here = [t for t in train.TASKS if t in acc]
    fig, axes = plt.subplots(1, len(tasks_here), figsize=(max(7.0, 1.5 * len(folders) + 3) * len(tasks_here), 5.2),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks_here):
        names = sorted(acc[task], key=order_key)
        for i, name in enumerate(names):
            shift = 0.07 * (i - (len(names) - 1) / 2)  # side by side, so error bars stay apart
            xs, accs = zip(*[(x + shift, a) for x, a in enumerate(acc[task][name]) if a])
            fewest, most = min(map(len, accs)), max(map(len, accs))
            seeds = f"{fewest}-{most}" if fewest < most else f"{most}"
            bars = ax.errorbar(xs, [statistics.mean(a) for a in accs], yerr=[mean_std(a)[1] for a in accs],
                               capsize=3, alpha=0.85, label=f"{name} ({seeds} seeds)", **style(i))
            for x, a in zip(xs, accs):  # each seed, so that one outlier is not read as a spread
                ax.scatter([x] * len(a), a, s=9, color=bars[0].get_color(), alpha=0.5, zorder=3)
            if (paper := PAPER_CHAR_ACC.get(task, {}).get(name)) is not None:
                ax.plot(len(folders) + shift, paper, color=bars[0].get_color(), markersize=8,
                        **{**style(i), "linestyle": "none"})
        ax.axvline(len(folders) - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance (0.10)")
        ticks = [f"{folder}\n" + changes.replace(" ", "\n") for folder, changes in folders]
        ax.set_xticks(range(len(folders) + 1), ticks + ["the paper\n(its setting: L=10,\nbudget 24, d=384,\ndropout 0.1,\n5000 iters)"], fontsize=8)
        ax.set(title=f"{task}: step by step, each keeping the changes before it",
               ylabel="char_acc at the training length\n(mean ± std over seeds; dots: each seed)", ylim=(0, 1.12))
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "sweep.png"))
    plt.close(fig)


def plot_budgets(entries, out_dir):
    """test_budgets.png: char_acc at the first evaluation length against the test budget,
    one line per model, one panel per task, seed spread as error bars."""
    tasks_here = [t for t in train.TASKS if any(e["task"] == t for e in entries)]
    if not tasks_here or (plt := pyplot()) is None:
        return
    fig, axes = plt.subplots(1, len(tasks_here), figsize=(5.5 * len(tasks_here), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks_here):
        es = [e for e in entries if e["task"] == task]
        n = min(int(n) for e in es for b in e["budgets"].values() for n in b)
        rows = budget_groups(es)
        for i, (label, group) in enumerate(rows):
            budgets = sorted({int(b) for e in group for b in e["budgets"]})
            accs = [[e["budgets"][str(b)][str(n)]["char_acc"] for e in group if str(b) in e["budgets"]]
                    for b in budgets]
            shift = 1.05 ** (i - (len(rows) - 1) / 2)  # side by side, so error bars stay apart
            ax.errorbar([b * shift for b in budgets], [statistics.mean(a) for a in accs],
                        yerr=[mean_std(a)[1] for a in accs], capsize=3, alpha=0.85, label=label, **style(i))
            ax.axvline(group[0]["train_budget"], color="grey", linewidth=0.5)
        ax.axhline(0.1, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{task}: thinking longer at test time (L={n})",
               xlabel="test budget (block passes per token; grey line: trained at)",
               ylabel="char_acc (mean ± std over seeds)", xscale="log", ylim=(0, 1.02))
        ticks = sorted({int(b) for e in es for b in e["budgets"]})
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "test_budgets.png"))
    plt.close(fig)
