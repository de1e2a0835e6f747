"""
The flags of a run, parsed once and checked, as nanoGPT's configurator.py sits beside its
train.py. The table of settings is train.py's (SETTINGS, PRESETS); the lab's flags are
here (GRID, EVALUATE), so that one parse of a request decides whether one run takes it or
the lab does (hand_over gives the lab its request). A flag is known by its whole name only
(no abbreviations), and every check runs before any work, so that bad input never costs a
run or a file and says what is wrong in one line.
"""

import argparse
import difflib
import math
import os
import subprocess
import sys
from dataclasses import fields

import tasks
from artrm import Config, LADDER
from machine import get_device
from records import UserError
from stopping import handling

POSITIVE = ("n_digits", "max_iters", "batch_size", "eval_examples", "eval_interval",
            "log_interval", "lr", "budget", "n_embd", "n_head", "block_size", "n_outer",
            "n_inner")
NON_NEGATIVE = ("warmup_iters", "weight_decay", "grad_clip", "temperature", "threads",
                "ckpt_interval", "ponder_weight")
AT_MOST_1 = ("halt_explore",)  # a probability
BELOW_1 = ("dropout",)
# as a model name: ar_trm+full_grad
EXTENSIONS = ("full_grad", "deep_supervision", "halt_loss", "random_depth")

# The lab's flags (beside every flag of train.py): a request with any of them, or with
# several runs, is the lab's, handed over whole to the file that takes it.
GRID = dict(
    seeds=(1, "run seeds seed .. seed+seeds-1"),
    jobs=(1, "runs at a time, each its own process (on GPU k mod count; CPU threads shared)"),
    shard=("", "K/N: run only the K-th of N disjoint slices of the run list (job arrays)"),
    flops_match=("", "a model: each run trains for the FLOPs that model spends in max_iters "
                 "(ceiling)"),
    eval_budgets=("", "after each run trains: evaluate.py at these test-time budgets (comma list)"),
    step_extend=("cycle", "with --eval_budgets: cycle or last (see evaluate.py)"),
    plot=(False, "write the figures too (report.py; needs matplotlib)"),
    report=(False, "run nothing: the tables of out_dir's records, or of the grid that --model, "
            "--task, --seed or --seeds name, with the commands of the runs it lacks"),
)
EVALUATE = dict(  # its lengths, examples and temperature are train.py's flags
    seeds=(1, "evaluate seeds seed .. seed+seeds-1"),
    ckpt=("", "a checkpoint (or export.py model) to evaluate, instead of each run's own"),
    eval_budgets=("", "comma list of test-time budgets to evaluate tied rungs at "
                  "(think longer or shorter)"),
    step_extend=("cycle", "step embeddings past the trained steps: cycle (the authors') or last"),
    eval_thresholds=("", "comma list of ACT halting thresholds in (0, 1] to evaluate ut, dual_ut "
                     "and nested_ut at (trained at 1 - 1e-6: halt sooner)"),
    eval_only=(False, "evaluate saved checkpoints again: evaluate.py"),
)
LAB = {"grid.py": GRID, "evaluate.py": EVALUATE}
# Set in the environment of every process the lab or a hand-over starts: such a process is
# one run or one lab file, and never hands a request over again, whatever its flags.
STARTED_BY = "ARTRM_STARTED_BY"
HERE = os.path.dirname(os.path.abspath(__file__))


class ArgumentParser(argparse.ArgumentParser):

    def __init__(self, **kw):
        super().__init__(allow_abbrev=False, **kw)  # --max_iter is not --max_iters

    def error(self, message):  # one line, as every other bad input (argparse would add its usage)
        known = [o for o in self._option_string_actions if o.startswith("--")]
        typed = [a.split("=")[0] for a in message.split() if a.startswith("--")]
        near = [m for t in typed for m in difflib.get_close_matches(t, known, n=1, cutoff=0.6)]
        unknown = message.startswith("unrecognized arguments") and typed
        if unknown:
            message = f"unknown flag {typed[0]}" + (f": did you mean {near[0]}?" if near else "")
        raise UserError(f"{message} (python {os.path.basename(self.prog)} -h lists every flag)")


def parser(settings, presets, doc, epilog=None, lab=None):
    """A flag per setting (name -> (default, help)), its help naming the paper's value; and
    lab's flags (file -> settings) in a group of their own."""
    p = ArgumentParser(prog=os.path.basename(sys.argv[0]),
                       description=doc.split("\n\n")[0].strip(), epilog=epilog)
    p.add_argument("--preset", choices=sorted(presets), default=None,
                   help="named settings (default: laptop)")
    groups = [(p, settings)] + [(p.add_argument_group(f"{f}'s flags"), s)
                                for f, s in (lab or {}).items()]
    added = set()
    for group, table in groups:
        for k, (v, what) in table.items():
            if k in added:  # a flag two lab files share is listed once
                continue
            added.add(k)
            paper = f"; paper: {presets['paper'][k]}" if k in presets["paper"] else ""
            if isinstance(v, bool):
                kind = dict(action=argparse.BooleanOptionalAction)
            else:
                kind = dict(type=type(v), metavar=type(v).__name__.upper())
            group.add_argument(f"--{k}", default=None, help=f"{what} (default: {v}{paper})",
                               **kind)
    return p


def parse_args(argv, settings, presets, doc, epilog=None, lab=None):
    """The settings asked for: the given flags over the preset over the defaults, parsed once.
    args.given holds the flags as parsed ({name: value}), which command lines are made of."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser(settings, presets, doc, epilog, lab).parse_args(argv)
    given = {k: v for k, v in vars(a).items() if v is not None}
    table = {**{k: v for f in (lab or {}).values() for k, v in f.items()}, **settings}
    defaults = {k: v for k, (v, _) in table.items()}
    preset = given.get("preset", "laptop")
    args = argparse.Namespace(**{**defaults, **presets[preset], **given, "preset": preset})
    args.given, args.argv = given, argv
    args.models = expand(args.model, LADDER, "model")
    args.tasks = expand(args.task, tasks.TASKS, "task")
    args.eval_lengths = comma_list(args.eval_lengths, "--eval_lengths")
    if not args.eval_lengths:
        raise UserError("--eval_lengths names no length")
    return args


def comma_list(value, flag, kind=int, what="whole numbers"):
    """The values of a comma-list flag (--eval_lengths, the lab's --eval_budgets and
    --eval_thresholds), each a kind."""
    try:
        return [kind(s) for s in str(value).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"{flag} takes a comma list of {what}, got {value!r}") from None


def command_line(given):
    """The flags {name: value} as a command line, as they were parsed."""
    out = []
    for k, v in given.items():
        if isinstance(v, bool):
            out.append(f"--{k}" if v else f"--no-{k}")
        else:
            out += [f"--{k}", str(v)]
    return out


def lab_for(args):
    """The lab's file that takes this request (None: one run, in this process): evaluate.py
    with --eval_only, grid.py with any other flag of the lab's or several runs."""
    lab = "evaluate.py" if args.eval_only else None
    lab_flags = {k for f in LAB.values() for k in f} & args.given.keys()
    if lab is None and (lab_flags or len(args.models) * len(args.tasks) > 1):
        lab = "grid.py"
    if lab is None:
        return None
    stray = sorted(lab_flags - LAB[lab].keys())
    if stray:
        other = " (with --eval_only: evaluate.py)" if stray[0] in EVALUATE else ""
        raise UserError(f"--{stray[0]} is not a flag of {lab}{other}")
    if os.environ.get(STARTED_BY):  # no request goes round: the lab's runs are one run each
        raise UserError(f"this process was started by {os.environ[STARTED_BY]} and does not "
                        f"hand a request over again (here to {lab})")
    return lab


def hand_over(lab, argv):
    """Run the lab's file with these flags, and pass a signal on to it (Ctrl-C, kill, a
    scheduler's SIGTERM): in a session of its own, a terminal's Ctrl-C reaches it from here
    only. The lab's file (and every run it starts) knows from STARTED_BY not to hand it on."""
    env = {**os.environ, STARTED_BY: "train.py"}
    p = subprocess.Popen([sys.executable, os.path.join(HERE, lab), *argv], env=env,
                         start_new_session=True)
    with handling(lambda signum, frame: p.send_signal(signum)):
        return p.wait()


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
    """Check every setting before any work, so that bad input never costs a run or a file;
    ({model name: its Config}, the device): each built and found here, once."""
    for k, v in vars(args).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"--{k} must be a finite number, got {v}")
    bounds = [(POSITIVE, lambda v: v > 0, "positive"), (NON_NEGATIVE, lambda v: v >= 0,
              "zero or positive"), (AT_MOST_1, lambda v: 0 <= v <= 1, "in [0, 1]"),
              (BELOW_1, lambda v: 0 <= v < 1, "in [0, 1)")]
    for keys, ok, what in bounds:
        for k in keys:
            if not ok(getattr(args, k)):
                raise UserError(f"--{k} must be {what}, got {getattr(args, k)}")
    if any(n <= 0 for n in args.eval_lengths):
        raise UserError(f"--eval_lengths must be positive, got {args.eval_lengths}")
    check_out_dir(args.out_dir)
    configs = {m: model_config(args, m) for m in args.models}
    for task in args.tasks:
        check_fits(task, [args.n_digits] + args.eval_lengths, args.block_size, "--block_size")
    device = get_device(args.device, UserError)  # one that this machine lacks is refused here
    if args.compile and device != "cuda":  # --device auto picks CUDA where there is one
        raise UserError("--compile is offered on CUDA only")
    return configs, device


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
