"""
Evaluate saved checkpoints again, with each one's own config: at new lengths, sampled,
or thinking longer or shorter at test time (a tied rung run for another number of steps).

    python evaluate.py --model ut --task addition --eval_lengths 6,8      # out/addition_ut_s1337/ckpt.pt
    python evaluate.py --ckpt out/addition_ut_s1337/ckpt.pt --temperature 1
    python evaluate.py --model iter,ut --task addition --seeds 3 --eval_budgets 3,6,12,24

(`python train.py --eval_only` with the same flags hands them over to this file.) With
--eval_budgets, each run's results go to test_budgets.json beside its checkpoint, a record
of its own that the report reads.
"""

import os
import sys

from artrm import Config, Model
import train
from train import UserError, evaluate, run_name

FLAGS = dict(  # beside train.py's flags, which set the lengths, examples and temperature
    seeds=(1, "evaluate seeds seed .. seed+seeds-1"),
    ckpt=("", "a checkpoint file to evaluate, instead of each run's own in out_dir"),
    eval_budgets=("", "comma list of test-time budgets to evaluate tied rungs at (think longer or shorter)"),
    step_extend=("cycle", "step embeddings past the trained steps: cycle (the authors') or last"),
    eval_only=(False, "(what train.py hands over here)"),
)


def budgets_of(value):
    try:
        return [int(s) for s in str(value).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--eval_budgets takes a comma list of whole numbers, got {value!r}") from None


def check_test_budgets(config, args, where=""):
    """A test budget must suit the rung, as a training budget does; dense has no tied depth."""
    if args.step_extend not in ("cycle", "last"):
        raise UserError(f"--step_extend is cycle or last, got {args.step_extend!r}")
    if args.eval_budgets and not config.rung.tied:
        raise UserError(f"{where}--eval_budgets: dense has no tied depth to extend, its depth is its parameters")
    for b in args.eval_budgets:
        try:
            Config(**{**vars(config), "budget": b})
        except ValueError as e:
            raise UserError(f"{where}--eval_budgets {b}: {e}") from None


def evaluate_budgets(model, task, seed, args, device, checkpoint, iters):
    """Evaluate a trained tied rung at each test budget and write what it gave, whole, to
    test_budgets.json beside the checkpoint."""
    c, budgets = model.config, {}
    for b in args.eval_budgets:
        budgets[str(b)] = at = evaluate(model, task, args.eval_lengths, args.eval_examples, device, args.temperature,
                                        n_steps=b // c.passes_per_step, extend=args.step_extend)
        print(f"test budget {b:3d} (trained at {c.budget}): " + " | ".join(
            f"L={n} char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f} passes {r['passes']:.1f}"
            for n, r in at.items()))
    name = "+".join([c.model] + [e for e in train.EXTENSIONS if getattr(c, e)])
    train.write_json(os.path.join(os.path.dirname(checkpoint), "test_budgets.json"), {
        "task": task, "name": name, "model": c.model, "seed": seed, "checkpoint": checkpoint, "iters": iters,
        "train_budget": c.budget, "extend": args.step_extend, "temperature": args.temperature,
        "eval_examples": args.eval_examples, "budgets": budgets, "code": train.code_version()})
    return budgets


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
        args = train.parse_args(argv, lab=FLAGS, doc=__doc__)
        args.eval_budgets = budgets_of(args.eval_budgets)
        device = train.get_device(args.device)
        if args.threads:
            train.torch.set_num_threads(args.threads)
        runs = [(t, m, s) for t in args.tasks for m in args.models for s in range(args.seed, args.seed + args.seeds)]
        paths = [args.ckpt] if args.ckpt else [os.path.join(args.out_dir, run_name(*run), "ckpt.pt") for run in runs]
        checked = []
        for path, (task, _, seed) in zip(paths, runs):  # every checkpoint checked before any is evaluated
            ckpt = train.load_checkpoint(path)
            task = ckpt.get("task", task)  # a checkpoint knows its task
            model = restore_model(ckpt, path, device)
            train.check_fits(task, args.eval_lengths, model.config.block_size, "the checkpoint's block_size")
            check_test_budgets(model.config, args, f"{path}: ")
            checked.append((path, ckpt, task, ckpt.get("seed", seed), model))
        for path, ckpt, task, seed, model in checked:
            print(f"{path}: {model.config.model} on {task}, iter {ckpt['iter']}")
            res = evaluate(model, task, args.eval_lengths, args.eval_examples, device, args.temperature, show=3)
            for n, r in res.items():
                print(f"  L={n}: char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f} "
                      f"pos_acc {' '.join(f'{v:.2f}' for v in r['pos_acc'])}")
            if args.eval_budgets:
                evaluate_budgets(model, task, seed, args, device, path, ckpt["iter"])
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
