"""
The flags of a run, parsed and checked, as nanoGPT's configurator.py sits beside its
train.py. The table of settings is train.py's (SETTINGS, PRESETS); the lab's files pass
their own flags beside it. Every check runs before any work, so that bad input never costs
a run or a file, and says what is wrong in one line.
"""

import argparse
import math
import os
import sys
from dataclasses import fields

import tasks
from artrm import Config, RUNGS
from machine import get_device
from records import UserError
from tasks import TASKS

POSITIVE = ("n_digits", "max_iters", "batch_size", "eval_examples", "eval_interval",
            "log_interval", "lr")
NON_NEGATIVE = ("warmup_iters", "weight_decay", "grad_clip", "temperature", "threads",
                "ckpt_interval")
# (budget, n_embd, n_head, dropout, ponder_weight, halt_explore, ...: Config checks them)
EXTENSIONS = ("full_grad", "deep_supervision", "halt_loss")  # as a model name: ar_trm+full_grad
LAB = {"--report": "grid.py", "--eval_only": "evaluate.py"}  # any other flag of the lab: grid.py


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every other bad input (argparse would add its usage)
        raise UserError(f"{message} (python {os.path.basename(self.prog)} -h lists every flag)")


def parser(settings, presets, doc, epilog=None):
    """A flag per setting (name -> (default, help)), its help naming the paper's value."""
    p = ArgumentParser(prog=os.path.basename(sys.argv[0]),
                       description=doc.split("\n\n")[0].strip(), epilog=epilog)
    p.add_argument("--preset", choices=sorted(presets), default="laptop",
                   help="named settings (default: laptop)")
    for k, (v, what) in settings.items():
        paper = f"; paper: {presets['paper'][k]}" if k in presets["paper"] else ""
        if isinstance(v, bool):
            kind = dict(action=argparse.BooleanOptionalAction)
        else:
            kind = dict(type=type(v), metavar=type(v).__name__.upper())
        p.add_argument(f"--{k}", default=None, help=f"{what} (default: {v}{paper})", **kind)
    return p


def parse_args(argv, settings, presets, doc, epilog=None):
    """The settings asked for: the given flags over the preset over the defaults."""
    a = parser(settings, presets, doc, epilog).parse_args(argv)
    given = {k: v for k, v in vars(a).items() if v is not None and k != "preset"}
    defaults = {k: v for k, (v, _) in settings.items()}
    args = argparse.Namespace(**{**defaults, **presets[a.preset], **given, "preset": a.preset})
    args.given, args.argv = sorted(given), list(sys.argv[1:] if argv is None else argv)
    args.models = expand(args.model, RUNGS, "model")
    args.tasks = expand(args.task, TASKS, "task")
    try:
        args.eval_lengths = [int(s) for s in str(args.eval_lengths).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--eval_lengths takes a comma list of whole numbers, "
                        f"got {args.eval_lengths!r}") from None
    if not args.eval_lengths:
        raise UserError("--eval_lengths names no length")
    return args


def expand(value, choices, what):
    """The names in a comma list (or all of choices); a model may carry extensions."""
    names = [s.strip() for s in value.split(",") if s.strip()]
    if value == "all":
        names = list(choices)
    if not names:
        raise UserError(f"--{what} names no {what}; choose from {', '.join(choices)} or all")
    for n in names:
        base, *ext = n.split("+")
        known = base in choices and all(e in EXTENSIONS for e in ext)
        if not known or (ext and what != "model"):
            more = f"; add extensions as rung+{'+'.join(EXTENSIONS)}" if what == "model" else ""
            raise UserError(f"unknown {what} {n!r}; choose from {', '.join(choices)} or all{more}")
    return names


def plan(args):
    """Every run the flags name (with the lab's --seeds), in a fixed order: (task, model, seed)."""
    return [(t, m, s) for t in args.tasks for m in args.models
            for s in range(args.seed, args.seed + args.seeds)]


def lab_for(argv, settings, presets):
    """The lab's file for a request with a flag of the lab's or for several runs (None: one run)."""
    flags = {a.split("=")[0] for a in argv if a.startswith("--")}
    own = {"--preset", "--help"} | {f"--{no}{k}" for k in settings for no in ("", "no-")}
    for f in sorted(flags):
        if f in LAB:
            return LAB[f]
    if flags - own:
        return "grid.py"
    if "-h" in argv or "--help" in argv:  # the help of one run
        return None
    args = parse_args(argv, settings, presets, "")
    return "grid.py" if len(args.models) * len(args.tasks) > 1 else None


def model_config(args, name):
    """The Config of a model name such as 'ar_trm' or 'ar_trm+full_grad', with the run's
    settings."""
    rung, *ext = name.split("+")
    settings = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(Config)}}
    try:
        return Config(**{**settings, **{e: True for e in ext}, "model": rung,
                         "vocab_size": len(tasks.VOCAB)})
    except ValueError as e:  # named once: Config's own message may name the model already
        said = str(e) if f"for {name}:" in str(e) else f"{name}: {e}"
        raise UserError(said) from None


def validate(args):
    """Check every setting before any work, so that bad input never costs a run or a file."""
    for k, v in vars(args).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"--{k} must be a finite number, got {v}")
    for k in POSITIVE:
        if getattr(args, k) <= 0:
            raise UserError(f"--{k} must be positive, got {getattr(args, k)}")
    for k in NON_NEGATIVE:
        if getattr(args, k) < 0:
            raise UserError(f"--{k} must be zero or positive, got {getattr(args, k)}")
    if any(n <= 0 for n in args.eval_lengths):
        raise UserError(f"--eval_lengths must be positive, got {args.eval_lengths}")
    for m in args.models:
        model_config(args, m)
    for task in args.tasks:
        check_fits(task, [args.n_digits] + args.eval_lengths, args.block_size, "--block_size")
    check_out_dir(args.out_dir)
    device = get_device(args.device)  # one that this machine lacks is refused here
    if args.compile and device != "cuda":  # --device auto picks CUDA where there is one
        raise UserError("--compile is offered on CUDA only")


def check_fits(task, lengths, block_size, whose):
    for n in lengths:
        if tasks.seq_len(task, n) > block_size:
            raise UserError(f"{task} at length {n} needs {tasks.seq_len(task, n)} tokens, more "
                            f"than {whose} {block_size}")


def check_out_dir(out_dir):
    """The nearest part of the path that exists must be a writable directory."""
    if not out_dir.strip():
        raise UserError("--out_dir is empty")
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--out_dir {out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out_dir {out_dir}: {existing} is not writable")
