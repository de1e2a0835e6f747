"""
Tables from run records: every number it shows is read from <out_dir>/**/record.json.
The figures are figures.py's, the test-time budgets' tables evaluate.py's. The command that
shows them is the comparison's, as its flags are (grid.py imports this file):

    python train.py --report --out_dir out             # the tables; results.json and .md rebuilt
    python train.py --report --plot --out_dir out      # and the figures (needs matplotlib)
    python train.py --report --model all --task all --seeds 3 --out_dir out   # and what it lacks

Tables are one per task, one row per model, each cell the mean and the sample standard
deviation (n-1) over seeds; a row of one seed shows its value alone.
"""

import json
import os
import re
import statistics

from artrm import LADDER
from records import atomic_write, write_json
from tasks import TASKS

# How a run was evaluated or logged (train.py's RESUMABLE settings but max_iters, and two
# that older records hold): runs that differ only in these share a row.
EVALUATION = {"eval_lengths", "eval_examples", "eval_interval", "log_interval", "temperature",
              "eval_budgets", "step_extend"}


def name_of(record):
    return record.get("name", record["model"])


def order_key(name):
    """Ladder order, each rung's extensions after it."""
    rung = name.split("+")[0]
    rungs = list(LADDER)
    return rungs.index(rung) if rung in rungs else len(rungs), name  # one this code lacks: last


def natural(text):
    """Sort key that puts budget=2 before budget=12 and step2 before step10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def tasks_of(records):
    """The tasks of records (or of test-budget entries): the paper's order, then any others."""
    here = {r["task"] for r in records}
    return [t for t in TASKS if t in here] + sorted(here - set(TASKS))


def chance(task):
    """A uniform guess's accuracy per answer character: the task's own (None: a task this
    code lacks)."""
    return TASKS[task].chance if task in TASKS else None


def chance_said(tasks_here):
    """'0.10', or each task's where they differ."""
    said = {t: "?" if chance(t) is None else f"{chance(t):.2f}" for t in tasks_here}
    if len(set(said.values())) == 1:
        return next(iter(said.values()))
    return ", ".join(f"{c} on {t}" for t, c in said.items())


def own_runs(record):
    """A figure's scope of comparison: the model's own runs of its task, so that a setting set
    per model and task (the iterations of --flops_match) neither splits nor labels a series."""
    return record["task"], name_of(record)


def groups(records, scope=lambda record: None):
    """[(label, records)] in ladder order. A label is the model's name and the settings that
    vary among the records of its scope (all of them by default: a table's rows), so that runs
    of one scope that differ (say budget=2 and budget=12) never share a label."""
    keys = sorted({k for r in records for k in r["config"]} - EVALUATION)
    alike = {}
    for r in records:
        alike.setdefault(scope(r), []).append(r)
    vary = {s: [k for k in keys if len({json.dumps(r["config"].get(k)) for r in rs}) > 1]
            for s, rs in alike.items()}
    label = lambda r: " ".join([name_of(r)] + [f"{k}={r['config'].get(k)}" for k in vary[scope(r)]])
    rows = {}
    for r in sorted(records, key=lambda r: (order_key(name_of(r)), natural(label(r)), r["seed"])):
        rows.setdefault(label(r), []).append(r)
    return list(rows.items())

# -----------------------------------------------------------------------------
# Tables: one per task, one row per model (with the settings that tell its rows apart).

def at_training_length(record):
    """A record's evaluation at the operand length it trained at."""
    return record["eval"][str(record["n_digits"])]


def mean_std(values):
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values):
    """mean±std; one value alone has no spread to show (not ±0)."""
    values = list(values)
    if not values:
        return ""
    m, s = mean_std(values)
    return f"{m:.3f}" + (f"±{s:.3f}" if len(values) > 1 else "")


def quarters(pos_acc):
    """Accuracy by output quarter, Q1 = earliest digits."""
    n = len(pos_acc)
    return [statistics.mean(pos_acc[q * n // 4: max((q + 1) * n // 4, q * n // 4 + 1)])
            for q in range(4)]


def spent_flops(record):
    """The training FLOPs per token a run's batches spent (a batch runs until its last
    position halts). A record older than that count still says it where no forward stopped
    early (every rung that never halts, and halting rungs whose halting never fired): each
    forward ran the ceiling. None for an older record whose forwards did stop early."""
    spent = record.get("spent_train_flops_per_token")
    if spent is None and record["early_exit_fraction_train"] == 0:
        return record["train_flops_per_token"]
    return spent


def spent_floor(record):
    """What a run spent at least, where spent_flops does not know: every forward that did not
    stop early ran the ceiling, and a batch runs at least as long as its positions needed."""
    ran_ceiling = (1 - record["early_exit_fraction_train"]) * record["train_flops_per_token"]
    return max(record["executed_train_flops_per_token"], ran_ceiling)


def flops_per_token(record):
    """The training FLOPs per token a run spent: as its batches ran (a batch runs until its
    last position halts) as spent_flops knows it, else what it spent at least (an older
    record whose forwards stopped early: spent_floor)."""
    spent = spent_flops(record)
    return spent_floor(record) if spent is None else spent


def spent_mflop(records):
    """Training MFLOP per token the batches spent, mean over runs; ≥ the mean of what they
    spent at least where a record lacks the count."""
    at_least = any(spent_flops(r) is None for r in records)
    mean = statistics.mean(flops_per_token(r) for r in records)
    return f"{'≥' if at_least else ''}{mean / 1e6:.2f}"


def table_rows(records):
    """One row per model, each value mean±std over its seeds (failed runs counted apart)."""
    lengths = sorted({int(n) for r in records if r["status"] == "ok" for n in r["eval"]})
    # newer records also hold the FLOPs spent: a batch runs until its last position halts
    spent = any("spent_train_flops_per_token" in r for r in records)
    header = ["model", "seeds", "params", "passes train/eval (budget)", "grad",
              f"train MFLOP/tok exec{'/spent' if spent else ''} (ceiling)", "wall s", "loss"]
    header += [f"{k} L={n}" for n in lengths for k in ("char", "seq")]
    rows = []
    for label, group in groups(records):
        rs = [r for r in group if r["status"] == "ok"]
        bad = len(group) - len(rs)
        if not rs:
            rows.append([label, f"0 ({bad} failed)"] + [""] * (len(header) - 2))
            continue
        mean = lambda key: statistics.mean(r[key] for r in rs)
        row = [label, f"{len(rs)}" + (f" ({bad} failed)" if bad else ""), f"{rs[0]['params']:,}",
               f"{mean('executed_block_passes_train'):.1f}/"
               f"{mean('executed_block_passes_eval'):.1f} ({rs[0]['block_passes']})",
               str(rs[0]["grad_block_passes"]),
               f"{mean('executed_train_flops_per_token') / 1e6:.2f}"
               f"{'/' + spent_mflop(rs) if spent else ''} "
               f"({rs[0]['train_flops_per_token'] / 1e6:.2f})",
               f"{mean('wall_s'):.0f}", pm(r["final_loss"] for r in rs)]
        for n in lengths:
            row += [pm(r["eval"][str(n)][k] for r in rs if str(n) in r["eval"])
                    for k in ("char_acc", "seq_acc")]
        rows.append(row)
    return header, rows


def format_table(header, rows, markdown=False):
    if markdown:
        return "\n".join(f"| {' | '.join(r)} |" for r in [header, ["---"] * len(header)] + rows)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows)


def mean_pos_acc(runs):
    """Accuracy by output position at each run's training length, mean over runs ([] if none)."""
    accs = [at_training_length(r)["pos_acc"] for r in runs
            if r["status"] == "ok" and str(r["n_digits"]) in r["eval"]]
    return [statistics.mean(v) for v in zip(*accs)] if len({len(a) for a in accs}) == 1 else []


def position_chart(records):
    bars = " ▁▂▃▄▅▆▇█"
    rows = groups(records)
    width = max((len(label) for label, _ in rows), default=0)
    lines = []
    for label, group in rows:
        acc = mean_pos_acc(group)
        if acc:
            q = " ".join(f"{v:.2f}" for v in quarters(acc))
            chart = "".join(bars[round(a * 8)] for a in acc)
            lines.append(f"{label:<{width}} |{chart}|  Q1..Q4 {q}")
    return "\n".join(lines)


def tables(records):
    """[(task, header, rows, position chart)], one per task of the records."""
    return [(task, *table_rows(rs), position_chart(rs))
            for task in tasks_of(records) for rs in [[r for r in records if r["task"] == task]]]


def describe_records(records):
    """What the runs share (their settings), where they ran, and with which code."""
    same = lambda k, v: all(json.dumps(r["config"].get(k)) == json.dumps(v) for r in records)
    shared = {k: v for k, v in records[0]["config"].items() if same(k, v)} if records else {}
    ok = [r for r in records if r["status"] == "ok"]
    where = sorted({f"{r.get('hardware', '?')}, torch {r.get('torch', '?')}" for r in ok})
    code = sorted({r.get("code", "?") for r in ok})
    return (f"{len(records)} run(s). Settings shared by all: "
            + ", ".join(f"{k}={v}" for k, v in shared.items())
            + f".  \nRan on: {'; '.join(where)}. Code: {', '.join(code)}. Wall s is training time, "
              f"evaluation excluded; chance is {chance_said(tasks_of(records))} per digit.")


def print_tables(records):
    records = list(records)
    if not records:
        return
    print("\n" + describe_records(records).replace("  \n", "\n"))
    for task, header, rows, chart in tables(records):
        print(f"\n== {task}: mean±std over seeds; passes are per token per forward\n")
        print(format_table(header, rows))
        print("\naccuracy by output position at the training length "
              f"(first digit left; ' '=0, █=1)\n{chart}")


def write_views(out_dir, records, sections):
    """results.json (every record, in ladder order) and results.md (the tables, then sections:
    more Markdown lines, say evaluate.py's of the test-time budgets), rebuilt whole."""
    ordered = sorted(records.values(), key=lambda r: (r["task"], order_key(name_of(r)), r["seed"]))
    write_json(os.path.join(out_dir, "results.json"), ordered)
    md = ["# Results", "", describe_records(ordered), ""]
    for task, header, rows, chart in tables(ordered):
        md += [f"## {task}", "", format_table(header, rows, markdown=True), "",
               "Accuracy by output position (first digit left; ' '=0, █=1; chance is "
               f"{chance_said([task])}):", "",
               "```", chart, "```", ""]
    text = "\n".join(md + list(sections))
    atomic_write(os.path.join(out_dir, "results.md"), lambda f: f.write(text.encode()))
