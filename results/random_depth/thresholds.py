"""
This experiment's halting at test time: the ACT rungs (ut, dual_ut, fixed and random depth)
evaluated at halting thresholds below the trained 1 - 1e-6 (evaluate.py --eval_thresholds,
test_thresholds.json beside each checkpoint). A lower threshold halts a position sooner.
Its table (printed) and its figure: char_acc against the passes per token, as the positions
ran and as the batch spent (a forward runs until its last position halts).

    python results/random_depth/thresholds.py   # writes results/random_depth/thresholds.png
"""

import glob
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))  # the repository's report.py
import figures  # noqa: E402
import records  # noqa: E402
import report  # noqa: E402

PASSES = {"passes": "as its positions ran", "spent_passes": "as the batch spent"}


def read_entries(out_dir):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out_dir, "*",
                                                                       "test_thresholds.json")))]


def curves(entries):
    """{(name, length): {threshold: [each seed's results]}}, names in ladder order,
    thresholds from the lowest."""
    out = {}
    key = lambda e: (report.order_key(e["name"]), e["seed"])
    for e in sorted(entries, key=key):
        for t, at in e["thresholds"].items():
            for n, r in at.items():
                out.setdefault((e["name"], int(n)), {}).setdefault(float(t), []).append(r)
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def mean(rs, key):
    return statistics.mean(r[key] for r in rs)


def table(entries):
    """(header, rows): per model and length (row) and threshold (column), char_acc mean±std
    over seeds with the passes the positions ran / the batch spent."""
    got = curves(entries)
    thresholds = sorted({t for v in got.values() for t in v})
    header = ["model", "L", "seeds"] + [f"{t:g}" for t in thresholds]
    rows = []
    for (name, n), v in sorted(got.items(), key=lambda kv: (kv[0][1],
                                                            report.order_key(kv[0][0]))):
        seeds = len(next(iter(v.values())))
        rows.append([name, str(n), str(seeds)] + [
            f"{report.pm(r['char_acc'] for r in v[t])} ({mean(v[t], 'passes'):.1f}/"
            f"{mean(v[t], 'spent_passes'):.1f})" if t in v else "" for t in thresholds])
    return header, rows


def plot(entries, trained, out_dir, plt):
    """thresholds.png: a panel per length (columns) and per way of counting passes (rows), a
    line per model through its means at each threshold, a dot per seed. trained: the runs'
    records, for the settings they trained with."""
    got = curves(entries)
    lengths = sorted({n for _, n in got})
    names = sorted({name for name, _ in got}, key=report.order_key)
    style = figures.styles(names)
    fig, axes = plt.subplots(len(PASSES), len(lengths), figsize=(5.5 * len(lengths) + 3.5, 8),
                             squeeze=False)
    for row, (which, said) in enumerate(PASSES.items()):
        for ax, n in zip(axes[row], lengths):
            for name in names:
                v = got.get((name, n))
                if not v:
                    continue
                ax.plot([mean(rs, which) for rs in v.values()],
                        [mean(rs, "char_acc") for rs in v.values()], alpha=0.85, label=name,
                        **style[name])
                seeds = [r for rs in v.values() for r in rs]  # each at its own passes
                ax.scatter([r[which] for r in seeds], [r["char_acc"] for r in seeds], s=10,
                           color=style[name]["color"], alpha=0.6)
            figures.chance_line(ax, ["addition"])
            ax.set(title=f"addition L={n}: char_acc against the passes {said}",
                   xlabel=f"block passes per token, {said} (one point per threshold)",
                   ylabel="char_acc (line: mean of seeds; dots: each seed)", ylim=(0, 1.02),
                   xlim=(0, 1.04 * max(e["budget"] for e in entries)))
    thresholds = ", ".join(map(str, sorted({float(t) for e in entries for t in e["thresholds"]})))
    evaluated = {f"{e['eval_examples']} examples in one batch, "
                 + (f"temperature {e['temperature']}" if e["temperature"] else "greedy")
                 for e in entries}
    figures.suptitle(fig, out_dir, trained, f"ACT halting thresholds {thresholds} (trained at "
                     f"{entries[0]['train_threshold']})", *sorted(evaluated))
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    figures.save(fig, os.path.join(out_dir, "thresholds.png"))
    plt.close(fig)


def main():
    entries = read_entries(HERE)
    print(report.format_table(*table(entries)))
    plt = figures.pyplot()
    if plt is None:
        return 1
    runs = {(e["name"], e["seed"]) for e in entries}
    trained = [r for r in records.read_records(HERE).values() if (r["name"], r["seed"]) in runs]
    plot(entries, trained, HERE, plt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
