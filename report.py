"""
Tables and figures from run records, and nothing else: no torch, no model. Every number
it shows is read from <out_dir>/**/record.json (and test_budgets.json).

    python report.py --out_dir out             # the tables; results.json and results.md rebuilt
    python report.py --plot --out_dir out      # and the figures (needs matplotlib)
    python report.py --model all --task all --seeds 3 --out_dir out   # that grid only, and what it lacks

(`python train.py --report` with the same flags hands them over to this file.) Tables are
one per task, one row per model, each cell the mean and the sample standard deviation
(n-1) over seeds; a row of one seed shows its value alone.
"""

import argparse
import ast
import json
import os
import re
import shlex
import statistics
import sys

from records import UserError, atomic_write, read_records, read_test_budgets, run_name, write_json

HERE = os.path.dirname(os.path.abspath(__file__))


def constant(path, name):
    """A constant of a project file, read as text: the ladder's order without importing torch."""
    with open(os.path.join(HERE, path)) as f:
        tree = ast.parse(f.read())
    return next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == name)


RUNGS, TASKS = constant("artrm.py", "RUNGS"), constant("tasks.py", "TASKS")


def strip_flags(argv, drop):
    """argv without the flags in drop and their values (a value is what does not start with --)."""
    out, skip = [], False
    for a in argv:
        if a.startswith("--"):
            flag = a.split("=")[0]
            skip = flag in drop or flag.replace("--no-", "--") in drop
        if not skip:
            out.append(a)
    return out

# -----------------------------------------------------------------------------
# The views of the records: results.json and results.md.

def write_views(out_dir, records):
    """results.json (every record, in ladder order) and results.md (the tables), rebuilt whole."""
    ordered = sorted(records.values(), key=lambda r: (r["task"], order_key(name_of(r)), r["seed"]))
    write_json(os.path.join(out_dir, "results.json"), ordered)
    md = ["# Results", "", describe_records(ordered), ""]
    for task, header, rows, chart in tables(ordered):
        md += [f"## {task}", "", format_table(header, rows, markdown=True), "",
               "Accuracy by output position (first digit left; ' '=0, █=1; chance is 0.10):", "",
               "```", chart, "```", ""]
    for task, n, header, rows in budget_tables(read_test_budgets(out_dir)):
        md += [f"## {task}: thinking longer or shorter at test time (L={n})", "",
               "char_acc, mean±std over seeds, and the block passes executed per token (at evaluation)", "",
               format_table(header, rows, markdown=True), ""]
    atomic_write(os.path.join(out_dir, "results.md"), lambda f: f.write("\n".join(md).encode()))


# -----------------------------------------------------------------------------
# Tables: one per task, one row per model (with the settings that tell its rows apart).

def name_of(record):
    return record.get("name", record["model"])


def order_key(name):
    """Ladder order, each rung's extensions after it."""
    rung = name.split("+")[0]
    return RUNGS.index(rung) if rung in RUNGS else len(RUNGS), name  # a rung this code lacks goes last


# How a run was evaluated or logged (train.py's RESUMABLE settings but max_iters, and two
# that older records hold): runs that differ only in these share a row.
EVALUATION = {"eval_lengths", "eval_examples", "eval_interval", "log_interval", "temperature", "eval_budgets",
              "step_extend"}


def row_keys(records):
    """{id(record): row label}: the model name, plus the settings in which the task's
    records differ (say budget=2 and budget=12 of one rung), so different runs never share a row."""
    keys = sorted({k for r in records for k in r["config"]})
    varying = [k for k in keys if k not in EVALUATION and len({json.dumps(r["config"].get(k)) for r in records}) > 1]
    return {id(r): " ".join([name_of(r)] + [f"{k}={r['config'].get(k)}" for k in varying]) for r in records}


def natural(text):
    """Sort key that puts budget=2 before budget=12 and step2 before step10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def groups(records, label=None):
    """[(row label, records)] in ladder order; label: {id(record): row label}, row_keys' by default."""
    label = label or row_keys(records)
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


def tasks_of(records):
    """The tasks of records (or of test-budget entries): the paper's order, then any others."""
    here = {r["task"] for r in records}
    return [t for t in TASKS if t in here] + sorted(here - set(TASKS))


def tables(records):
    """[(task, header, rows, position chart)], one per task of the records."""
    return [(task, *table_rows(rs), position_chart(rs))
            for task in tasks_of(records) for rs in [[r for r in records if r["task"] == task]]]


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
    for task in tasks_of(entries):
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


def style(i, n):
    """Series i of n in a figure: its own colour (tab20 past ten series), and a marker and a
    dash of its own too, so that series stay apart in greyscale."""
    import matplotlib
    color = matplotlib.colormaps["tab10" if n <= 10 else "tab20"](i % 20)
    return dict(color=color, marker="os^vDP*Xh<>p"[i % 12], linestyle=["-", "--", ":", "-."][i % 4])


def figure_groups(records):
    """[(label, records)] in ladder order, for a figure: a model is split only by the settings
    that vary among its own runs of one task (say budget=2 and budget=12), so that a setting
    set per model and task (the iterations of --flops_match) neither splits nor labels it."""
    keys = sorted({k for r in records for k in r["config"]} - EVALUATION)
    label = {}
    for r in records:
        same = [x for x in records if x["task"] == r["task"] and name_of(x) == name_of(r)]
        varying = [k for k in keys if len({json.dumps(x["config"].get(k)) for x in same}) > 1]
        label[id(r)] = " ".join([name_of(r)] + [f"{k}={r['config'].get(k)}" for k in varying])
    return groups(records, label)


def seeds(ax, x, values, color):
    """Each seed as a dot beside the mean: one outlier is not read as a spread."""
    ax.scatter([x] * len(values), values, s=14, color=color, edgecolor="black", linewidths=0.4, zorder=4)


def save(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    print(f"wrote {path}")


def plot(experiment, out_dir):
    """The figures of {run directory relative to out_dir: record}: per task, accuracy by
    answer position and during training; ladder.png and flops.png over the tasks."""
    plt = pyplot()
    if plt is None:
        return
    records = [r for r in experiment.values() if r["status"] == "ok"]
    for task in tasks_of(records):
        rows = figure_groups([r for r in records if r["task"] == task])
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for i, (label, group) in enumerate(rows):
            acc = mean_pos_acc(group)
            shift = 0.3 * (i - (len(rows) - 1) / 2) / max(len(rows), 1)  # side by side, so equal lines stay visible
            if acc:
                ax1.plot([p + 1 + shift for p in range(len(acc))], acc, alpha=0.85, label=label, **style(i, len(rows)))
            h = group[0]["history"]
            flops = [e["iter"] / group[0]["iters"] * group[0]["executed_train_flops_per_token"]
                     * group[0]["train_tokens"] for e in h]
            acc_h = [statistics.mean(r["history"][i]["char_acc"] for r in group if len(r["history"]) > i)
                     for i in range(len(h))]
            ax2.plot(flops, acc_h, markersize=4, alpha=0.85, label=label, **style(i, len(rows)))
        ax1.set(title=f"{task}: accuracy by answer position (training length)",
                xlabel="answer position (first digit = 1)", ylabel="accuracy (mean over seeds)", ylim=(0, 1.02))
        ax2.set(title=f"{task}: char_acc during training", xlabel="training FLOPs spent so far (executed)",
                ylabel="char_acc at the training length (mean over seeds)", ylim=(0, 1.02))
        ax2.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        for ax in (ax1, ax2):
            ax.axhline(0.1, color="grey", linestyle=":", linewidth=1)
        ax2.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        fig.tight_layout()
        save(fig, os.path.join(out_dir, f"{task}.png"))
        plt.close(fig)
    plot_ladder(records, out_dir, plt)
    plot_flops(records, out_dir, plt)


def plot_flops(records, out_dir, plt):
    """flops.png: char_acc at the training length against the training FLOPs each run spent
    (executed, whole run): the mean of each model large, each seed small; a panel per task."""
    tasks_here = tasks_of(records)
    if not tasks_here:
        return
    fig, axes = plt.subplots(1, len(tasks_here), figsize=(5.2 * len(tasks_here), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks_here):
        rows = figure_groups([r for r in records if r["task"] == task])
        for i, (label, group) in enumerate(rows):
            flops = [r["executed_train_flops_per_token"] * r["train_tokens"] for r in group]
            acc = [at_training_length(r)["char_acc"] for r in group]
            st = {**style(i, len(rows)), "linestyle": "none"}
            ax.plot(statistics.mean(flops), statistics.mean(acc), markersize=9, label=label, **st)
            ax.scatter(flops, acc, s=12, color=st["color"], alpha=0.6, zorder=3)
        ax.axhline(0.1, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{task}: accuracy against training compute", xlabel="training FLOPs spent (executed, whole run)",
               ylabel="char_acc at the training length", ylim=(0, 1.05))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                       title="mean (large), each seed (small)", title_fontsize=8)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "flops.png"))
    plt.close(fig)


def plot_ladder(records, out_dir, plt, reference=None, reference_label=""):
    """ladder.png: char_acc at the training length of every model on every task, a bar for
    the mean and a dot for each seed; reference ({task: {model: char_acc}}), where given,
    marked beside it."""
    rows = figure_groups(records)
    labels = [label for label, _ in rows]
    if not labels:
        return
    tasks_here = tasks_of(records)
    fig, ax = plt.subplots(figsize=(3 + len(labels) * (0.45 + 0.25 * len(tasks_here)), 4.6))
    width = 0.8 / len(tasks_here)
    for j, task in enumerate(tasks_here):
        by_label = dict(rows)
        xs = [i + (j - (len(tasks_here) - 1) / 2) * width for i in range(len(labels))]
        accs = [[at_training_length(r)["char_acc"] for r in by_label[label] if r["task"] == task] for label in labels]
        filled = [(x, a) for x, a in zip(xs, accs) if a]  # a model not run on a task leaves no bar
        ax.bar([x for x, _ in filled], [statistics.mean(a) for _, a in filled], width,
               color=["0.35", "0.6", "0.85"][j % 3], edgecolor="black", hatch=["", "//", ".."][j % 3], label=task)
        for x, a in filled:
            seeds(ax, x, a, "white")
        marks = [(x, (reference or {}).get(task, {}).get(label)) for x, label in zip(xs, labels)]
        if marks := [(x, v) for x, v in marks if v is not None]:
            ax.scatter(*zip(*marks), marker="_", s=300, linewidths=2.5, color="C3", zorder=5,
                       label=reference_label if j == 0 else None)
    ax.scatter([], [], s=14, color="white", edgecolor="black", linewidths=0.4, label="each seed")
    ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance (0.10)")
    long = max(len(part) for label in labels for part in label.split()) > 12  # tilted, so that they do not touch
    ax.set_xticks(range(len(labels)), [label.replace(" ", "\n") for label in labels], fontsize=8,
                  rotation=25 if long else 0, ha="right" if long else "center")
    ax.set(title="char_acc at the training length: the mean (bar) and each seed (dot)", ylabel="char_acc",
           ylim=(0, 1.05))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "ladder.png"))
    plt.close(fig)


def plot_budgets(entries, out_dir):
    """test_budgets.png: char_acc at the first evaluation length against the test budget,
    a line through each model's means and a dot for each seed, one panel per task."""
    tasks_here = tasks_of(entries)
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
            shift = 1.05 ** (i - (len(rows) - 1) / 2)  # side by side, so equal lines stay apart
            st = style(i, len(rows))
            ax.plot([b * shift for b in budgets], [statistics.mean(a) for a in accs], alpha=0.85, label=label, **st)
            for b, a in zip(budgets, accs):
                ax.scatter([b * shift] * len(a), a, s=10, color=st["color"], alpha=0.6, zorder=3)
            ax.axvline(group[0]["train_budget"], color="grey", linewidth=0.5)
        ax.axhline(0.1, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{task}: thinking longer at test time (L={n})",
               xlabel="test budget (block passes per token; grey line: trained at)",
               ylabel="char_acc (line: mean; dots: each seed)", xscale="log", ylim=(0, 1.02))
        ticks = sorted({int(b) for e in es for b in e["budgets"]})
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "test_budgets.png"))
    plt.close(fig)


# -----------------------------------------------------------------------------
# The report: of everything in out_dir, or of the grid its flags name, with what it lacks.

def parse_args(argv=None):
    """The report's own flags; the others (say --preset paper) are kept for the commands it prints."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--out_dir", default="out", help="where the records are (default: out)")
    p.add_argument("--plot", action="store_true", help="write PNG figures too (needs matplotlib)")
    p.add_argument("--report", action="store_true", help="(what train.py hands over here)")
    for flag, what in (("model", "rungs"), ("task", "tasks")):
        p.add_argument(f"--{flag}", help=f"a comma list of {what} or all: show this grid only, and what it lacks")
    p.add_argument("--seed", type=int, default=1337, help="the grid's first seed (default: 1337)")
    p.add_argument("--seeds", type=int, default=1, help="the grid's number of seeds (default: 1)")
    args, args.rest = p.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.grid = any(a.split("=")[0] in ("--model", "--task", "--seed", "--seeds") for a in args.argv)
    return args


def plan(args):
    """The runs of the grid the flags name (model and task default to train.py's)."""
    names = lambda value, all_: list(all_) if value == "all" else [s.strip() for s in value.split(",") if s.strip()]
    return [(t, m, s) for t in names(args.task or "reverse", TASKS) for m in names(args.model or "ar_trm", RUNGS)
            for s in range(args.seed, args.seed + args.seeds)]


def report(args):
    records = read_records(args.out_dir)
    if not records:
        raise UserError(f"no run records in {args.out_dir} (they are <out_dir>/<run>/record.json)")
    shown, budgets = records, read_test_budgets(args.out_dir)
    if args.grid:  # only the grid asked for, and what it lacks
        runs = plan(args)
        shown = {run_name(*r): records[run_name(*r)] for r in runs if run_name(*r) in records}
        budgets = [e for e in budgets if (e["task"], e["name"], e["seed"]) in set(runs)]
    print_tables(shown.values())
    print_budget_tables(budgets)
    if args.grid and (missing := [r for r in runs if records.get(run_name(*r), {}).get("status") != "ok"]):
        print(f"\n{len(missing)} of {len(runs)} run(s) of this grid are missing or failed; to run them:")
        rest = strip_flags(args.argv, {"--report", "--model", "--task", "--seed", "--seeds", "--shard", "--plot",
                                       "--jobs"})
        for task, name, seed in missing:
            state = "failed" if run_name(task, name, seed) in records else "missing"
            print(f"  {state}: python train.py {shlex.join(rest + ['--model', name, '--task', task, '--seed', str(seed)])}")
    write_views(args.out_dir, records)
    if args.plot:
        plot(shown, args.out_dir)
        plot_budgets(budgets, args.out_dir)
    print(f"\nwrote {args.out_dir}/results.json and results.md from {len(records)} record(s)")
    return 0


def main(argv=None):
    try:
        return report(parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
