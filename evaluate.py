"""
Evaluate saved checkpoints again, with each one's own config: at new lengths, sampled,
or thinking longer or shorter at test time (a tied rung run for another number of steps,
or an ACT rung halting at another threshold).

    python evaluate.py --model ut --task addition --eval_lengths 6,8  # reads out/<run>/ckpt.pt
    python evaluate.py --ckpt out/addition_ut_s1337/ckpt.pt --temperature 1
    python evaluate.py --model iter,ut --task addition --seeds 3 --eval_budgets 3,6,12,24
    python evaluate.py --model ut --task addition --eval_thresholds 0.3,0.9,0.999999

(`python train.py --eval_only` with the same flags hands them over to this file.) With
--eval_budgets, each run's results go to test_budgets.json beside its checkpoint, a record
of its own that the report reads; with --eval_thresholds, to test_thresholds.json.
"""

import os
import statistics
import sys

import torch

import figures
import flags
import report
import resume
import train
from artrm import HALT_THRESHOLD, Config, Model
from machine import cpu_threads, get_device
from records import UserError, code_version, run_name, write_json
from tasks import evaluate

EXTEND = {  # --step_extend: what a tied rung run past its trained steps adds at each step
    "cycle": "past its trained steps a rung reuses\nits step embeddings in turn (s_1..s_N, s_1..)",
    "last": "past its trained steps a rung repeats\nits last step embedding",
}


def write_beside(checkpoint, filename, model, task, seed, iters, args, **what):
    """Write a test-time evaluation, whole, to filename beside checkpoint: the run it
    evaluated (its model as --model names it, e.g. ut+random_depth), how, and what (what)."""
    c = model.config
    name = "+".join([c.model] + [e for e in flags.EXTENSIONS if getattr(c, e)])
    write_json(os.path.join(os.path.dirname(checkpoint), filename), {
        "task": task, "name": name, "model": c.model, "seed": seed, "checkpoint": checkpoint,
        "iters": iters, **what, "temperature": args.temperature,
        "eval_examples": args.eval_examples, "code": code_version()})


def check_test_budgets(config, args, where=""):
    """A test budget must suit the rung, as a training budget does; dense has no tied depth."""
    if args.step_extend not in EXTEND:
        raise UserError(f"--step_extend is cycle or last, got {args.step_extend!r}")
    if args.eval_budgets and not config.rung.tied:
        raise UserError(f"{where}--eval_budgets: dense has no tied depth to extend, "
                        "its depth is its parameters")
    for b in args.eval_budgets:
        try:
            Config(**{**vars(config), "budget": b})
        except ValueError as e:
            raise UserError(f"{where}--eval_budgets {b}: {e}") from None


def check_thresholds(config, thresholds, where=""):
    """A halting threshold moves ACT's halting: the rung must have it."""
    if thresholds and config.rung.halting != "act":
        raise UserError(f"{where}--eval_thresholds: {config.model} has no ACT halting "
                        "(ut, dual_ut and nested_ut have)")
    for t in thresholds:
        if not 0 < t <= 1:
            raise UserError(f"{where}--eval_thresholds must each be in (0, 1], got {t}")


def evaluate_budgets(model, task, seed, args, device, checkpoint, iters):
    """Evaluate a trained tied rung at each test budget and write what it gave, whole, to
    test_budgets.json beside the checkpoint."""
    c, budgets = model.config, {}
    for b in args.eval_budgets:
        budgets[str(b)] = at = evaluate(model, task, args.eval_lengths, args.eval_examples, device,
                                        args.temperature, n_steps=b // c.passes_per_step,
                                        extend=args.step_extend)
        print(f"test budget {b:3d} (trained at {c.budget}): " + " | ".join(
            f"L={n} char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f} "
            f"passes {r['passes']:.1f}"
            for n, r in at.items()))
    write_beside(checkpoint, "test_budgets.json", model, task, seed, iters, args,
                 train_budget=c.budget, extend=args.step_extend, budgets=budgets)
    return budgets


def evaluate_thresholds(model, task, seed, args, device, checkpoint, iters):
    """Evaluate a trained ACT rung at each halting threshold (its trained budget) and write
    what it gave, whole, to test_thresholds.json beside the checkpoint: a lower threshold
    halts a position sooner, and spent_passes is what the batch then ran."""
    thresholds = {}
    try:
        for t in args.eval_thresholds:
            model.halt_threshold = t
            thresholds[str(t)] = at = evaluate(model, task, args.eval_lengths,
                                               args.eval_examples, device, args.temperature)
            print(f"halting threshold {t:g} (trained at {HALT_THRESHOLD:g}): " + " | ".join(
                f"L={n} char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f} "
                f"passes {r['passes']:.1f} spent {r['spent_passes']:.1f}" for n, r in at.items()))
    finally:  # the model halts as trained again, whatever happened
        model.halt_threshold = HALT_THRESHOLD
    write_beside(checkpoint, "test_thresholds.json", model, task, seed, iters, args,
                 budget=model.config.budget, train_threshold=HALT_THRESHOLD, thresholds=thresholds)
    return thresholds

# -----------------------------------------------------------------------------
# The view of test_budgets.json: its tables (printed, and in results.md) and its figure.

def budget_groups(entries):
    """[(label, entries)] in ladder order: a model and the way it extends its steps."""
    rows = {}
    key = lambda e: (report.order_key(e["name"]), e["train_budget"], e["seed"] or 0)
    for e in sorted(entries, key=key):
        rows.setdefault(f"{e['name']} ({e['extend']})", []).append(e)
    return list(rows.items())


def budget_tables(entries):
    """[(task, length, header, rows)]: per model (row) and test budget (column), char_acc
    mean±std over seeds and the passes executed, from test_budgets.json records."""
    out = []
    for task in report.tasks_of(entries):
        es = [e for e in entries if e["task"] == task]
        lengths = sorted({int(n) for e in es for b in e["budgets"].values() for n in b})
        budgets = sorted({int(b) for e in es for b in e["budgets"]})
        for n in lengths:
            header = ["model", "trained at", "seeds"] + [f"budget {b}" for b in budgets]
            rows = []
            for label, group in budget_groups(es):
                row = [label, str(group[0]["train_budget"]), str(len(group))]
                for b in budgets:
                    cells = [e["budgets"][str(b)][str(n)] for e in group
                             if str(n) in e["budgets"].get(str(b), {})]
                    if not cells:  # a budget this model was not evaluated at
                        row.append("")
                        continue
                    passes = statistics.mean(c["passes"] for c in cells)
                    row.append(f"{report.pm(c['char_acc'] for c in cells)} ({passes:.1f})")
                rows.append(row)
            out.append((task, n, header, rows))
    return out


def budget_markdown(entries):
    """results.md's sections of the test-time budgets (lines)."""
    md = []
    for task, n, header, rows in budget_tables(entries):
        md += [f"## {task}: thinking longer or shorter at test time (L={n})", "",
               "char_acc, mean±std over seeds, and the block passes executed per token "
               "(at evaluation)", "", report.format_table(header, rows, markdown=True), ""]
    return md


def print_budget_tables(entries):
    for task, n, header, rows in budget_tables(entries):
        print(f"\n== {task}: char_acc at L={n} when thinking longer or shorter at test time "
              f"(passes executed per token in brackets)\n")
        print(report.format_table(header, rows))


def plot_budgets(entries, out_dir, recorded):
    """test_budgets.png: char_acc against the test budget, a line through each model's means
    and a dot for each seed, one panel per task and evaluation length. A rung that halts
    runs fewer passes than it may: its legend says how many it ran. recorded: {run name:
    record}, for the settings the runs were trained with."""
    panels = [(task, n) for task in report.tasks_of(entries)
              for n in sorted({int(n) for e in entries if e["task"] == task
                               for b in e["budgets"].values() for n in b})]
    plt = figures.pyplot() if panels else None
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 4, 4.2), squeeze=False)
    for ax, (task, n) in zip(axes[0], panels):
        es = [e for e in entries if e["task"] == task]
        rows = budget_groups(es)
        style = figures.styles([label for label, _ in rows])
        for i, (label, group) in enumerate(rows):
            cells = {}  # {budget: each seed's results at L=n}
            for e in group:
                for b, at in e["budgets"].items():
                    if str(n) in at:
                        cells.setdefault(int(b), []).append(at[str(n)])
            budgets = sorted(cells)
            if not budgets:  # this model was not evaluated at this length
                continue
            accs = [[c["char_acc"] for c in cells[b]] for b in budgets]
            shift = 1.05 ** (i - (len(rows) - 1) / 2)  # side by side, so equal lines stay apart
            st = style[label]
            xs = [b * shift for b in budgets]
            ran = [statistics.mean(c["passes"] for c in cells[b]) for b in budgets]
            halts = any(r < 0.98 * b for b, r in zip(budgets, ran))  # ran fewer than allowed
            said = (f"{label}: halts, ran {ran[0]:.1f} of {budgets[0]} .. {ran[-1]:.1f} of "
                    f"{budgets[-1]} passes (mean)") if halts else label
            ax.plot(xs, [statistics.mean(a) for a in accs], alpha=0.85, label=said, **st)
            for x, a in zip(xs, accs):
                ax.scatter([x] * len(a), a, s=10, color=st["color"], alpha=0.6, zorder=3)
            ax.axvline(group[0]["train_budget"], color="grey", linewidth=0.5)
        figures.chance_line(ax, [task])
        ax.set(title=f"{task}: thinking longer at test time (L={n})",
               xlabel="test budget (block passes per token allowed; grey line: trained at)",
               ylabel="char_acc (line: mean; dots: each seed)", xscale="log", ylim=(0, 1.02))
        ticks = sorted({int(b) for e in es for b in e["budgets"]})
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    trained = [recorded[k] for k in sorted({run_name(e["task"], e["name"], e["seed"])
                                            for e in entries}) if k in recorded]
    evaluated = {f"{e['eval_examples']} examples, " + ("greedy" if not e["temperature"]
                                                       else f"temperature {e['temperature']}")
                 for e in entries}
    figures.suptitle(fig, out_dir, trained, *sorted(evaluated))
    extends = sorted({e["extend"] for e in entries})
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                       title="\n".join(f"({x}): {EXTEND[x]}" for x in extends), title_fontsize=8)
    fig.tight_layout()
    figures.save(fig, os.path.join(out_dir, "test_budgets.png"))
    plt.close(fig)


def restore_model(ckpt, path, device):
    try:
        model = Model(Config(**ckpt["config"])).to(device)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} was written by an artrm whose model differs from this one "
                        f"({str(e).splitlines()[0][:160]})") from None
    return model


def main(argv=None):
    """Evaluate saved checkpoints (--ckpt FILE, or each run's own) with their own config."""
    try:
        args = flags.parse_args(argv, train.SETTINGS, train.PRESETS, __doc__,
                                lab={"evaluate.py": flags.EVALUATE})
        args.eval_budgets = flags.comma_list(args.eval_budgets, "--eval_budgets")
        args.eval_thresholds = flags.comma_list(args.eval_thresholds, "--eval_thresholds",
                                                float, "numbers")
        device = get_device(args.device, UserError)
        torch.set_num_threads(args.threads or cpu_threads())
        runs = flags.plan(args)
        own = [os.path.join(args.out_dir, run_name(*run), "ckpt.pt") for run in runs]
        paths = [args.ckpt] if args.ckpt else own
        checked = []  # every checkpoint checked before any is evaluated
        for path, (task, _, seed) in zip(paths, runs):
            ckpt = resume.load_checkpoint(path, resume.MODEL_KEYS)
            task = ckpt.get("task", task)  # a checkpoint knows its task
            model = restore_model(ckpt, path, device)
            flags.check_fits(task, args.eval_lengths, model.config.block_size,
                             "the checkpoint's block_size")
            check_test_budgets(model.config, args, f"{path}: ")
            check_thresholds(model.config, args.eval_thresholds, f"{path}: ")
            checked.append((path, ckpt, task, ckpt.get("seed", seed), model))
        for path, ckpt, task, seed, model in checked:
            print(f"{path}: {model.config.model} on {task}, iter {ckpt['iter']}")
            res = evaluate(model, task, args.eval_lengths, args.eval_examples, device,
                           args.temperature, show=3)
            for n, r in res.items():
                print(f"  L={n}: char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f} "
                      f"pos_acc {' '.join(f'{v:.2f}' for v in r['pos_acc'])}")
            if args.eval_budgets:
                evaluate_budgets(model, task, seed, args, device, path, ckpt["iter"])
            if args.eval_thresholds:
                evaluate_thresholds(model, task, seed, args, device, path, ckpt["iter"])
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
