"""
The figures of the records, beside report.py's tables: per task, accuracy by answer position
and during training, ladder.png and flops.png over the tasks. matplotlib is optional: without
it --plot says how to install it. A rung keeps its colour and marker in every figure.
"""

import json
import os
import statistics
import sys

from artrm import LADDER
from records import atomic_write
from report import at_training_length, chance, chance_said, groups, mean_pos_acc, own_runs
from report import flops_per_token, spent_flops, tasks_of


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("--plot needs matplotlib, which is not installed: pip install matplotlib",
              file=sys.stderr)
        return None


def styles(labels):
    """{label: style}: a rung has one colour and marker in every figure (its place in the
    ladder; rungs this code lacks take the ones after), its variants (extensions, settings)
    a dash and a marker of their own, so that series stay apart in greyscale too."""
    rung_of = lambda label: label.split()[0].split("+")[0]
    rungs = list(LADDER) + sorted({rung_of(label) for label in labels} - set(LADDER))
    out, variants = {}, {}
    for label in labels:
        i = rungs.index(rung_of(label))
        k = variants[i] = variants.get(i, -1) + 1
        marker = "os^vDP*"[i % 7] if k == 0 else "Xd<>phH"[(k - 1) % 7]
        dash = ["-", "--", ":", "-."][k % 4]
        out[label] = dict(color=f"C{i % 10}", marker=marker, linestyle=dash)
    return out


def setting(records):
    """What an experiment trained, in the settings all its records share."""
    keys = ("preset", "budget", "n_embd", "dropout", "n_digits", "max_iters")
    shared = [(k, records[0]["config"].get(k)) for k in keys
              if len({json.dumps(r["config"].get(k)) for r in records}) == 1]
    return ", ".join(f"{k}={v}" for k, v in shared)


def suptitle(fig, out_dir, records, *more):
    """A figure's heading: the experiment (out_dir's name), the settings its runs share, and
    whatever more a figure has to say of how it was made."""
    said = ([setting(records)] if records else []) + list(more)
    fig.suptitle(f"{os.path.basename(os.path.abspath(out_dir))}: {'; '.join(said)}", fontsize=9)


def flops_caveat(records):
    """What a FLOPs axis has to say when older records gave flops_per_token's lower bound."""
    counted = all(spent_flops(r) is not None for r in records)
    return () if counted else ("some halting runs at the FLOPs they spent at least",)


def chance_line(ax, tasks_here, label=False):
    """A dotted line at each task's chance (a uniform guess's accuracy per character)."""
    for c in sorted({chance(t) for t in tasks_here} - {None}):
        ax.axhline(c, color="grey", linestyle=":", linewidth=1,
                   label=f"chance ({chance_said([t for t in tasks_here if chance(t) == c])})"
                   if label else None)


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
        rows = groups([r for r in records if r["task"] == task], own_runs)
        style = styles([label for label, _ in rows])
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for i, (label, group) in enumerate(rows):
            acc = mean_pos_acc(group)
            shift = 0.3 * (i - (len(rows) - 1) / 2) / len(rows)  # so that equal lines stay visible
            if acc:
                ax1.plot([p + 1 + shift for p in range(len(acc))], acc, alpha=0.85, label=label,
                         **style[label])
            for r in group:  # each seed against its own FLOPs: halting rungs' seeds differ
                rate = flops_per_token(r) * r["train_tokens"] / r["iters"]
                ax2.plot([e["iter"] * rate for e in r["history"]],
                         [e["char_acc"] for e in r["history"]], markersize=3, alpha=0.7,
                         label=label if r is group[0] else None, **style[label])
        ax1.set(title=f"{task}: accuracy by answer position (training length)", ylim=(0, 1.02),
                xlabel="answer position (first digit = 1)", ylabel="accuracy (mean over seeds)")
        ax2.set(title=f"{task}: char_acc during training, each seed", ylim=(0, 1.02),
                xlabel="training FLOPs spent so far",
                ylabel="char_acc at the training length")
        ax2.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        for ax in (ax1, ax2):
            chance_line(ax, [task])
        ax2.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        suptitle(fig, out_dir, records, *flops_caveat(records))
        fig.tight_layout()
        save(fig, os.path.join(out_dir, f"{task}.png"))
        plt.close(fig)
    plot_ladder(records, out_dir, plt)
    plot_flops(records, out_dir, plt)


def plot_flops(records, out_dir, plt):
    """flops.png: char_acc at the training length against the training FLOPs each run spent
    (flops_per_token, whole run): the mean of each model large, each seed small; a panel per
    task."""
    tasks_here = tasks_of(records)
    if not tasks_here:
        return
    n = len(tasks_here)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks_here):
        rows = groups([r for r in records if r["task"] == task], own_runs)
        style = styles([label for label, _ in rows])
        for i, (label, group) in enumerate(rows):
            flops = [flops_per_token(r) * r["train_tokens"] for r in group]
            acc = [at_training_length(r)["char_acc"] for r in group]
            st = {**style[label], "linestyle": "none"}
            size = 6 + 1.5 * (len(rows) - 1 - i)  # hollow and smaller down the legend: equal
            ax.plot(statistics.mean(flops), statistics.mean(acc), markersize=size, label=label,
                    markerfacecolor="none", markeredgewidth=1.5, zorder=4, **st)  # points nest
            ax.scatter(flops, acc, s=10, color=st["color"], marker=st["marker"], alpha=0.5,
                       zorder=3)
        chance_line(ax, [task])
        ax.margins(x=0.08)  # the largest marker stays inside the axes
        ax.set(title=f"{task}: accuracy against training compute", ylim=(0, 1.05),
               xlabel="training FLOPs spent (whole run)",
               ylabel="char_acc at the training length")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                       title="mean (hollow; equal means nest),\neach seed (small, filled)",
                       title_fontsize=8)
    suptitle(fig, out_dir, records, *flops_caveat(records))
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "flops.png"))
    plt.close(fig)


def plot_ladder(records, out_dir, plt):
    """ladder.png: char_acc at the training length of every model on every task, a bar for
    the mean and a dot for each seed."""
    rows = groups(records, own_runs)
    labels = [label for label, _ in rows]
    if not labels:
        return
    tasks_here = tasks_of(records)
    fig, ax = plt.subplots(figsize=(3 + len(labels) * (0.45 + 0.25 * len(tasks_here)), 4.6))
    width = 0.8 / len(tasks_here)
    for j, task in enumerate(tasks_here):
        by_label = dict(rows)
        xs = [i + (j - (len(tasks_here) - 1) / 2) * width for i in range(len(labels))]
        accs = [[at_training_length(r)["char_acc"] for r in by_label[label] if r["task"] == task]
                for label in labels]
        filled = [(x, a) for x, a in zip(xs, accs) if a]  # a model not run on a task leaves no bar
        ax.bar([x for x, _ in filled], [statistics.mean(a) for _, a in filled], width,
               color=["0.35", "0.6", "0.85"][j % 3], hatch=["", "//", ".."][j % 3],
               edgecolor="black", label=task)
        for x, a in filled:  # each seed, a dot beside the mean: one outlier is not read as a spread
            ax.scatter([x] * len(a), a, s=14, color="white", edgecolor="black", linewidths=0.4,
                       zorder=4)
    ax.scatter([], [], s=14, color="white", edgecolor="black", linewidths=0.4, label="each seed")
    chance_line(ax, tasks_here, label=True)
    long = max(len(part) for label in labels for part in label.split()) > 12  # tilted: not touching
    ax.set_xticks(range(len(labels)), [label.replace(" ", "\n") for label in labels], fontsize=8,
                  rotation=25 if long else 0, ha="right" if long else "center")
    n_seeds = sorted({sum(r["task"] == task for r in group) for _, group in rows
                      for task in tasks_here} - {0})  # per bar
    seeds = f"{n_seeds[0]}-{n_seeds[-1]}" if n_seeds[0] < n_seeds[-1] else f"{n_seeds[0]}"
    ax.set(title=f"{os.path.basename(os.path.abspath(out_dir))} ({setting(records)}):\n"
           f"char_acc at the training length, the mean (bar) and each of {seeds} seeds (dot; "
           "equal ones overlap)", ylabel="char_acc", ylim=(0, 1.05))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "ladder.png"))
    plt.close(fig)
