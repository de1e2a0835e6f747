"""
This experiment's own figure: char_acc at the training length of each model, step by step
from the laptop preset toward the paper's setting (one folder per step, each keeping the
changes of the steps before it), with the paper's own number last.

    python results/toward_paper/sweep.py      # writes results/toward_paper/sweep.png
"""

import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))  # the repository's report.py
import records  # noqa: E402
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


def plot_sweep(records, out_dir, plt):
    """sweep.png: char_acc at the training length of each model along the experiment's
    folders (one step each), mean and seed spread, with the paper's value (at its own
    setting) last."""
    folders, acc = sweep(records)
    if len(folders) < 2:
        return
    tasks_here = [t for t in report.TASKS if t in acc]
    width = max(7.0, 1.5 * len(folders) + 3) * len(tasks_here)
    fig, axes = plt.subplots(1, len(tasks_here), figsize=(width, 5.2), squeeze=False)
    for ax, task in zip(axes[0], tasks_here):
        names = sorted(acc[task], key=report.order_key)
        for i, name in enumerate(names):
            shift = 0.07 * (i - (len(names) - 1) / 2)  # side by side, so the seeds' dots stay apart
            xs, accs = zip(*[(x + shift, a) for x, a in enumerate(acc[task][name]) if a])
            fewest, most = min(map(len, accs)), max(map(len, accs))
            seeds = f"{fewest}-{most}" if fewest < most else f"{most}"
            st = report.style(i, len(names))
            ax.plot(xs, [statistics.mean(a) for a in accs], alpha=0.85,
                    label=f"{name} ({seeds} seeds)", **st)
            for x, a in zip(xs, accs):  # each seed, so that one outlier is not read as a spread
                ax.scatter([x] * len(a), a, s=12, color=st["color"], alpha=0.6, zorder=3)
            paper = PAPER_CHAR_ACC.get(task, {}).get(name)
            if paper is not None:
                ax.plot(len(folders) + shift, paper, markersize=8, **{**st, "linestyle": "none"})
        ax.axvline(len(folders) - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance (0.10)")
        ticks = [f"{folder}\n" + changes.replace(" ", "\n") for folder, changes in folders]
        paper_tick = "the paper\n(its setting: L=10,\nbudget 24, d=384,\ndropout 0.1,\n5000 iters)"
        ax.set_xticks(range(len(folders) + 1), ticks + [paper_tick], fontsize=8)
        ax.set(title=f"{task}: step by step, each keeping the changes before it",
               ylabel="char_acc at the training length\n(line: mean over seeds; dots: each seed)",
               ylim=(0, 1.05))
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    report.save(fig, os.path.join(out_dir, "sweep.png"))
    plt.close(fig)


def main():
    plt = report.pyplot()
    if plt is None:
        return 1
    plot_sweep(records.read_records(HERE), HERE, plt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
