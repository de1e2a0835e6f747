"""
This experiment's own figure: char_acc at the training length of each model, step by step
from the laptop preset toward the paper's setting (one folder per step, each keeping the
changes of the steps before it), with the paper's own number last.

    python results/toward_paper/sweep.py      # writes results/toward_paper/sweep.png
"""

import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))  # the repository's report.py
import records  # noqa: E402
import figures  # noqa: E402
import report  # noqa: E402

# The paper's char_acc at L=10 (budget 24, d=384), where it gives a number ("solved" = 1.0).
PAPER_CHAR_ACC = {
    "addition": {"dense": 0.799, "iter": 0.544, "iter_step": 0.558, "ut": 0.658, "dual_ut": 0.835,
                 "nested_ut": 0.14, "ar_trm": 0.125},
    "copy": {"dense": 1.0, "iter": 1.0, "iter_step": 1.0, "ut": 1.0, "dual_ut": 1.0,
             "ar_trm": 0.110},
    "reverse": {"dense": 1.0, "iter": 1.0, "iter_step": 1.0, "ut": 1.0, "dual_ut": 1.0,
                "ar_trm": 0.100},
}


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
    for folder in sorted(by_folder, key=report.natural):
        configs = [r["config"] for r in by_folder[folder]]
        shared = {k: v for k, v in configs[0].items()
                  if k not in report.EVALUATION and all(c.get(k) == v for c in configs)}
        changes = " ".join(f"{k}={v}" for k, v in shared.items() if before and before.get(k) != v)
        folders.append((folder, changes))
        before = shared
    acc = {}
    for i, (folder, _) in enumerate(folders):
        for r in by_folder[folder]:
            by_model = acc.setdefault(r["task"], {})
            by_model.setdefault(report.name_of(r), [[] for _ in folders])[i].append(
                report.at_training_length(r)["char_acc"])
    return folders, acc


def step_of(folder, i):
    """A folder's place on the x axis: its step number (step5_width384: 5), else its order."""
    m = re.match(r"step(\d+)", folder)
    return int(m.group(1)) if m else i


def plot_sweep(records, out_dir, plt):
    """sweep.png: char_acc at the training length of each model along the experiment's
    folders (one step each; a step not run leaves a gap), mean and each seed, with the
    paper's value (at its own setting) last."""
    folders, acc = sweep(records)
    if len(folders) < 2:
        return
    steps = [step_of(folder, i) for i, (folder, _) in enumerate(folders)]
    paper_x = max(steps) + 1
    tasks_here = [t for t in report.TASKS if t in acc]
    width = max(7.0, 1.5 * paper_x + 3) * len(tasks_here)
    fig, axes = plt.subplots(1, len(tasks_here), figsize=(width, 5.4), squeeze=False)
    for ax, task in zip(axes[0], tasks_here):
        names = sorted(acc[task], key=report.order_key)
        style = figures.styles(names)
        for i, name in enumerate(names):
            shift = 0.07 * (i - (len(names) - 1) / 2)  # side by side, so the seeds' dots stay apart
            xs, accs = zip(*[(x, a) for x, a in zip(steps, acc[task][name]) if a])
            fewest, most = min(map(len, accs)), max(map(len, accs))
            seeds = f"{fewest}-{most}" if fewest < most else f"{most}"
            line_x, line_y = [], []
            for k, (x, a) in enumerate(zip(xs, accs)):
                if k and x != xs[k - 1] + 1:  # a step not run: the line breaks there
                    line_x, line_y = line_x + [float("nan")], line_y + [float("nan")]
                line_x, line_y = line_x + [x + shift], line_y + [statistics.mean(a)]
            st = style[name]
            ax.plot(line_x, line_y, alpha=0.85, label=f"{name} ({seeds} seeds)", **st)
            for x, a in zip(xs, accs):  # each seed, so that one outlier is not read as a spread
                ax.scatter([x + shift] * len(a), a, s=12, color=st["color"], alpha=0.6, zorder=3)
                if len(a) == 1:  # a "mean" of one seed is hollow: it is that seed alone
                    ax.plot(x + shift, a[0], marker=st["marker"], color=st["color"],
                            markerfacecolor="white", linestyle="none", zorder=4)
            paper = PAPER_CHAR_ACC.get(task, {}).get(name)
            if paper is not None:
                ax.plot(paper_x + shift, paper, markersize=8, **{**st, "linestyle": "none"})
        ax.axvline(paper_x - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance (0.10)")
        ax.plot([], [], marker="o", color="grey", markerfacecolor="white", linestyle="none",
                label="hollow: one seed only")
        ticks = {x: f"{folder}\n" + tick(changes) for x, (folder, changes) in zip(steps, folders)}
        ticks.update({x: f"step{x}\n(not run)" for x in range(paper_x) if x not in ticks})
        ticks[paper_x] = "the paper\n(its setting, as\nstep6; sampled at\ntemperature 1)"
        ax.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)], fontsize=8)
        ax.set(title=f"{task}: step by step, each keeping the changes before it",
               ylabel="char_acc at the training length (greedy; the paper: sampled)\n"
                      "(line: mean over seeds; dots: each seed)", ylim=(0, 1.05))
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    figures.save(fig, os.path.join(out_dir, "sweep.png"))
    plt.close(fig)


def tick(changes):
    """A step's tick: what it changes, one per line; a preset alone, not its every setting."""
    if "preset=" in changes:
        return next(c for c in changes.split() if c.startswith("preset="))
    return changes.replace(" ", "\n")


def main():
    plt = figures.pyplot()
    if plt is None:
        return 1
    plot_sweep(records.read_records(HERE), HERE, plt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
