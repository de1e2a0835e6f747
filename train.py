"""
Train one rung of the ladder on one task: settings, data, model, loop, evaluation,
checkpoint, read top to bottom. Several models, tasks or seeds make a comparison,
which grid.py runs (in --jobs processes, or one --shard of it per machine).

    python train.py --model ar_trm --task reverse          # one run (laptop preset)
    python train.py --model all --task all --seeds 3 --jobs 2   # the compute-matched comparison
    python train.py --report --out_dir out                 # tables (and --plot figures) from out's records
    python train.py --eval_only --model dense --task reverse --eval_lengths 6,8
    python bench.py --model dense --preset paper           # speed figures for this machine

Every run prints and stores its parameters, block passes per token (the budget and
what was actually executed), the passes that carry gradient, and training FLOPs.
"""

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, fields

import torch

import artrm
import tasks
from artrm import Config, Model, RUNGS
from tasks import TASKS

if __name__ == "__main__":  # grid.py and bench.py import this file as `train`: one module, not two
    sys.modules["train"] = sys.modules[__name__]

# -----------------------------------------------------------------------------
# Defaults. The laptop preset is the default; --preset paper is the paper's setting.
# Any flag given explicitly overrides the preset.
DEFAULTS = dict(
    model="ar_trm",        # a rung, a comma list of rungs, or "all"; rung+full_grad etc. adds extensions
    task="reverse",        # a task, a comma list of tasks, or "all"
    seed=1337,             # first seed; data stream and init both derive from it
    seeds=1,               # run seeds seed .. seed+seeds-1
    budget=12,             # block passes per token per forward (must suit every rung asked for)
    n_embd=64,             # width d
    n_head=4,              # attention heads (n_embd must be a multiple of it)
    dropout=0.0,           # on the attention probabilities and the attention and MLP outputs
    block_size=64,         # longest input the learned positions cover
    n_outer=2,             # H, nested rungs
    n_inner=2,             # L, nested rungs
    ponder_weight=0.0,     # ACT ponder cost weight (the paper: 0)
    halt_explore=0.25,     # ar_trm in training: chance a sequence must run a drawn minimum of steps (the paper's)
    full_grad=False,       # extension: nested rungs backprop through every pass
    deep_supervision=False,  # extension: loss on y after every step (TRM)
    halt_loss=False,       # extension: train ar_trm's halting head (TRM)
    flops_match="",        # a model: each run trains for the FLOPs that model spends in max_iters (ceiling)
    n_digits=6,            # training operand length L
    eval_lengths="6,12",   # comma list of operand lengths to evaluate
    eval_examples=100,     # fixed held-out examples per length
    eval_budgets="",       # comma list of test-time budgets to evaluate tied rungs at (think longer or shorter)
    step_extend="cycle",   # step embeddings past the trained steps at a test budget: cycle (the authors') or last
    eval_interval=250,     # evaluate every this many iters (and at the end)
    log_interval=50,       # progress line every this many iters
    max_iters=1500,        # training iterations (one fresh batch each)
    batch_size=64,
    lr=3e-3,               # AdamW peak learning rate
    weight_decay=0.01,
    warmup_iters=100,      # linear warm-up
    decay_lr=True,         # cosine decay to lr/10 after warm-up (False: constant, as the paper)
    grad_clip=1.0,         # clip the gradient norm at this (0: off, as the paper)
    temperature=0.0,       # evaluation decoding: 0 greedy, 1 samples as the paper's code
    device="auto",         # auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)
    compile=False,         # torch.compile the model (CUDA only; off by default)
    out_dir="out",         # one directory per run (record.json, train.log, ckpt.pt); results.json/.md views
    ckpt_interval=0,       # also checkpoint every this many iters (0: only at the end)
    resume=False,          # continue interrupted runs from their checkpoints (finished runs are always skipped)
    jobs=1,                # worker processes for a comparison's runs (GPU k mod count each, CPU threads shared)
    threads=0,             # CPU threads per process (0: this machine's threads / jobs)
    shard="",              # K/N: run only the K-th of N disjoint slices of the run list (job arrays)
    report=False,          # rebuild the tables, results.json/.md (and --plot figures) from out_dir's records
    eval_only=False,       # evaluate saved checkpoints, no training
    ckpt="",               # with --eval_only: a checkpoint file to evaluate, instead of each run's own
    plot=False,            # write PNG figures (needs matplotlib)
)
PRESETS = {
    "laptop": {},  # the DEFAULTS above: whole ladder x 3 tasks in minutes on 2 CPU cores
    "paper": dict(budget=24, n_embd=384, n_head=6, dropout=0.1, block_size=180, n_digits=10,
                  eval_lengths="10,20,30,40,50", eval_examples=100, eval_interval=250,
                  max_iters=5000, batch_size=64, lr=3e-4, weight_decay=0.01, warmup_iters=0,
                  decay_lr=False, grad_clip=0.0),
}
EVAL_SEED = 10_000_019  # held-out examples come from their own stream, apart from training's
HELP = {line.split("=")[0].strip(): line.split("#", 1)[1].strip()
        for line in open(__file__).read().split("DEFAULTS = dict(")[1].split("\n)")[0].splitlines()
        if "#" in line and "=" in line}


class UserError(Exception):
    """Bad input: reported as one line, never a traceback."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every other bad input (argparse would add its usage)
        raise UserError(f"{message} (python train.py -h lists every flag)")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="laptop", help="named settings (default: laptop)")
    for k, v in DEFAULTS.items():
        paper = f"; paper: {PRESETS['paper'][k]}" if k in PRESETS["paper"] else ""
        h = f"{HELP.get(k, '')} (default: {v}{paper})"
        if isinstance(v, bool):
            p.add_argument(f"--{k}", action=argparse.BooleanOptionalAction, default=None, help=h)
        else:
            p.add_argument(f"--{k}", type=type(v), default=None, metavar=type(v).__name__.upper(), help=h)
    a = p.parse_args(argv)
    given = {k: v for k, v in vars(a).items() if v is not None and k != "preset"}
    args = argparse.Namespace(**{**DEFAULTS, **PRESETS[a.preset], **given, "preset": a.preset})
    args.given = sorted(given)  # the flags set on the command line (a --report grid is one that names runs)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.models = expand(args.model, RUNGS, "model")
    args.tasks = expand(args.task, TASKS, "task")
    args.eval_lengths, args.eval_budgets = int_list(args.eval_lengths, "eval_lengths"), int_list(args.eval_budgets, "eval_budgets")
    if not args.eval_lengths:
        raise UserError("--eval_lengths names no length")
    try:
        k, n = (int(v) for v in args.shard.split("/")) if args.shard else (0, 1)
        assert 0 <= k < n
    except (ValueError, AssertionError):
        raise UserError(f"--shard takes K/N with 0 <= K < N (e.g. 0/8), got {args.shard!r}") from None
    args.shard_k, args.shard_n = k, n
    return args


def int_list(value, flag):
    try:
        return [int(s) for s in str(value).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--{flag} takes a comma list of whole numbers, got {value!r}") from None


EXTENSIONS = ("full_grad", "deep_supervision", "halt_loss")  # a model name may carry them: ar_trm+full_grad


def expand(value, choices, what):
    names = list(choices) if value == "all" else [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise UserError(f"--{what} names no {what}; choose from {', '.join(choices)} or all")
    for n in names:
        base, *ext = n.split("+")
        if base not in choices or (ext and what != "model") or any(e not in EXTENSIONS for e in ext):
            more = f"; add extensions as rung+{'+'.join(EXTENSIONS)}" if what == "model" else ""
            raise UserError(f"unknown {what} {n!r}; choose from {', '.join(choices)} or all{more}")
    return names


def model_name(config):
    """The model name of a Config: its rung and the extensions it has on, as rung+ext."""
    return "+".join([config.model] + [e for e in EXTENSIONS if getattr(config, e)])


def model_config(args, name):
    """The Config of a model name such as 'ar_trm' or 'ar_trm+full_grad', with the run's settings."""
    rung, *ext = name.split("+")
    keys = {f.name for f in fields(Config)}
    settings = {k: v for k, v in vars(args).items() if k in keys}
    return Config(**{**settings, **{e: True for e in ext}, "model": rung, "vocab_size": len(tasks.VOCAB)})


def validate(args):
    """Check everything before any run starts, so bad input never costs a finished run."""
    for name in ("n_digits", "max_iters", "batch_size", "eval_examples", "seeds", "eval_interval", "log_interval",
                 "jobs", "lr"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("warmup_iters", "weight_decay", "grad_clip", "temperature", "threads", "ckpt_interval"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be zero or positive, got {getattr(args, name)}")
    if any(n <= 0 for n in args.eval_lengths):
        raise UserError(f"--eval_lengths must be positive, got {args.eval_lengths}")
    if args.flops_match:
        expand(args.flops_match, RUNGS, "model")
    for m in args.models + ([args.flops_match] if args.flops_match else []):
        try:
            model_config(args, m)
        except ValueError as e:
            raise UserError(f"{m}: {e}") from None
    for task in args.tasks:
        check_fits(task, [args.n_digits] + args.eval_lengths, args.block_size, "--block_size")
    if args.step_extend not in ("cycle", "last"):
        raise UserError(f"--step_extend is cycle or last, got {args.step_extend!r}")
    for m in args.models:
        check_test_budgets(model_config(args, m), args.eval_budgets)
    check_writable(args.out_dir)
    if args.compile and get_device(args.device) != "cuda":  # --device auto picks CUDA where there is one
        raise UserError("--compile is offered on CUDA only")


def check_test_budgets(config, budgets, where=""):
    """A test budget must suit the rung, as a training budget does; dense has no tied depth."""
    if budgets and not config.rung.tied:
        raise UserError(f"{where}--eval_budgets: dense has no tied depth to extend, its depth is its parameters")
    for b in budgets:
        try:
            Config(**{**asdict(config), "budget": b})
        except ValueError as e:
            raise UserError(f"{where}--eval_budgets {b}: {e}") from None


def check_writable(out_dir):
    if not out_dir.strip():
        raise UserError("--out_dir is empty")
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):  # the nearest part of the path that exists must be a writable directory
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--out_dir {out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out_dir {out_dir}: {existing} is not writable")


def check_fits(task, lengths, block_size, whose):
    for n in lengths:
        if tasks.seq_len(task, n) > block_size:
            raise UserError(f"{task} at length {n} needs {tasks.seq_len(task, n)} tokens, more than "
                            f"{whose} {block_size}")


def get_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; choose from auto, cpu, cuda, mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device mps is not available on this machine")
    return name


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()

# -----------------------------------------------------------------------------
# Executed compute: what the halting rungs actually spend (the budget is a ceiling).

class PassMeter:
    """Counts over a model's forwards, apart for training and evaluation: the mean steps
    each position was still running (ACT n_updates) and how many forwards exited early
    because the whole batch had halted. `state` holds plain numbers, for checkpoints."""

    def __init__(self, model, state=None):
        self.state = state or {"train": [0, 0, 0.0], "eval": [0, 0, 0.0]}  # forwards, early exits, steps
        model.register_forward_hook(self.hook)

    def reset(self, mode):
        self.state[mode] = [0, 0, 0.0]

    def hook(self, model, inputs, output):
        tally = self.state["train" if model.training else "eval"]
        tally[0] += 1
        tally[1] += int(model.last_steps.max() < model.last_n_steps)  # a sync, as the readouts do per step
        tally[2] += float(model.last_steps.mean())

    def mean_steps(self, mode):
        forwards, _, steps = self.state[mode]
        return steps / max(forwards, 1)

    def early_fraction(self, mode):
        forwards, early, _ = self.state[mode]
        return early / max(forwards, 1)

# -----------------------------------------------------------------------------
# Evaluation: batched decoding of the answer from the prompt, no teacher forcing.

def eval_set(task, n_digits, n_examples, device):
    g = torch.Generator().manual_seed(EVAL_SEED + n_digits)  # fixed, identical on every device
    return tasks.make_examples(task, n_digits, n_examples, g).to(device)


@torch.no_grad()
def evaluate(model, task, lengths, n_examples, device, temperature=0.0, show=0, n_steps=None, extend="cycle"):
    """Greedy (or sampled) decoding of the fixed examples of each length, in one batch.
    n_steps: a test-time depth for a tied rung (see Model.forward)."""
    was_training = model.training
    model.eval()
    results = {}
    steps = []  # executed steps per position of every decoding forward
    hook = model.register_forward_hook(lambda m, i, o: steps.append(m.last_steps.mean()))
    for n in lengths:
        ex = eval_set(task, n, n_examples, device)
        P, A = tasks.prompt_len(task, n), tasks.answer_len(task, n)
        g = torch.Generator(device=device).manual_seed(EVAL_SEED) if temperature > 0 else None
        steps.clear()
        out = model.generate(ex[:, :P], A, temperature=temperature, generator=g, n_steps=n_steps, extend=extend)
        right = out[:, P:] == ex[:, P:P + A]                                    # (B, A)
        results[str(n)] = {"char_acc": right.float().mean().item(),
                           "seq_acc": right.all(1).float().mean().item(),
                           "pos_acc": [round(v, 4) for v in right.float().mean(0).tolist()],
                           "passes": float(torch.stack(steps).mean()) * model.config.passes_per_step}
        for i in torch.nonzero(~right.all(1)).flatten()[:show].tolist():
            said, truth = (tasks.decode(t).replace("\n", "⏎") for t in (out[i, P:P + A], ex[i, P:P + A]))
            print(f"  L={n}: {tasks.decode(ex[i, :P])}  model {said}  right {truth}")
    hook.remove()
    model.train(was_training)
    return results


def evaluate_budgets(model, task, seed, args, device, checkpoint, iters):
    """Evaluate a trained tied rung at each test budget of --eval_budgets, and write what it
    gave, whole, to test_budgets.json beside the checkpoint (a record of its own, for --report)."""
    c = model.config
    budgets = {}
    for b in args.eval_budgets:
        budgets[str(b)] = evaluate(model, task, args.eval_lengths, args.eval_examples, device, args.temperature,
                                   n_steps=b // c.passes_per_step, extend=args.step_extend)
        at = budgets[str(b)]
        print(f"test budget {b:3d} (trained at {c.budget}): " + " | ".join(
            f"L={n} char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f} passes {r['passes']:.1f}"
            for n, r in at.items()))
    write_json(os.path.join(os.path.dirname(checkpoint), "test_budgets.json"), {
        "task": task, "name": model_name(c), "model": c.model, "seed": seed, "checkpoint": checkpoint,
        "iters": iters, "train_budget": c.budget, "extend": args.step_extend, "temperature": args.temperature,
        "eval_examples": args.eval_examples, "budgets": budgets, "code": code_version()})
    return budgets

# -----------------------------------------------------------------------------
# Checkpoints (and records, and results views) are written with atomic_write, so a kill
# at any instant leaves the old file or the new one, never a torn one.

def save_checkpoint(path, state):
    atomic_write(path, lambda f: torch.save(state, f))


CKPT_KEYS = {"model", "optimizer", "config", "iter", "data_rng", "torch_rng", "history", "wall_s", "passes"}


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:  # weights_only: a checkpoint is data, never code to run
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, foreign file: one message, without torch's advice
        raise UserError(f"checkpoint {path} is corrupt or truncated: torch cannot read it as plain "
                        f"tensors and numbers ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not CKPT_KEYS <= ckpt.keys() or not isinstance(ckpt["config"], dict):
        raise UserError(f"{path} is a torch file but not an artrm checkpoint (it lacks the model's config)")
    return ckpt


# May change when a run resumes: they do not change the weights trained so far. A record
# whose run resumed with another value of one of them says so under "resumed".
RESUMABLE = ("max_iters", "eval_lengths", "eval_examples", "eval_interval", "log_interval", "temperature",
             "eval_budgets", "step_extend")


def setting_changes(old, new):
    """{setting: [old, new]} for the settings new gives another value than old. A setting
    missing from an older record had its default then (new knobs default to old behaviour)."""
    default = run_config(parse_args([]))
    return {k: [old.get(k, default.get(k)), v] for k, v in new.items() if old.get(k, default.get(k)) != v}


def check_same_run(changes, where, resume_hint):
    """Refuse, before any work, to resume or re-run a run with settings that change what it trains."""
    defining = {k: v for k, v in changes.items() if k not in RESUMABLE}
    if defining:
        said = "; ".join(f"{k} {a!r} there, {b!r} asked" for k, (a, b) in defining.items())
        raise UserError(f"{where} was trained with other settings ({said}); use another --out_dir for a new run")
    if changes and resume_hint:
        raise UserError(f"{where} differs in {', '.join(changes)}; add --resume to continue it with the new "
                        f"value(s), or use another --out_dir")


def resume_point(args, task, name, seed):
    """The checkpoint a run resumes from (None: it starts afresh), checked against the asked settings."""
    path = os.path.join(args.out_dir, run_name(task, name, seed), "ckpt.pt")
    if not (args.resume and os.path.exists(path)):
        return None
    ckpt = load_checkpoint(path)
    config = model_config(args, name)
    asked = {**asdict(config), **(run_config(args) if "settings" in ckpt else {})}
    check_same_run(setting_changes({**ckpt["config"], **ckpt.get("settings", {})}, asked), path, False)
    with torch.device("meta"):  # the shapes of this code's model, without building it
        shapes = {k: v.shape for k, v in Model(config).state_dict().items()}
    if shapes != {k: v.shape for k, v in ckpt["model"].items()}:
        raise UserError(f"{path} was written by an artrm whose model differs from this one; use another --out_dir")
    if args.max_iters < ckpt["iter"]:
        raise UserError(f"{path} has trained {ckpt['iter']} iterations already, more than --max_iters {args.max_iters}")
    return ckpt

# -----------------------------------------------------------------------------
# One run: train one rung on one task with one seed.

def get_lr(it, args):
    if it < args.warmup_iters:
        return args.lr * (it + 1) / args.warmup_iters
    if not args.decay_lr:
        return args.lr
    ratio = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.lr / 10 + 0.5 * (1 + math.cos(math.pi * ratio)) * (args.lr - args.lr / 10)


def run_name(task, model, seed):
    return f"{task}_{model}_s{seed}"


def run_args(args, task, name):
    """The settings of one run. With --flops_match its iterations come from the ratio of
    training FLOPs (ceiling) to the reference model's: compute-matched by construction."""
    if not args.flops_match:
        return args
    T = tasks.seq_len(task, args.n_digits)
    with torch.device("meta"):  # no memory, no init: only the FLOP count is wanted
        ref, own = (Model(model_config(args, n)).compute_stats(T)["train_flops_per_token"]
                    for n in (args.flops_match, name))
    return argparse.Namespace(**{**vars(args), "max_iters": round(args.max_iters * ref / own)})


def train_run(args, task, name, seed, device):
    """Train (or resume) one run of model `name` and return its results record."""
    config = model_config(args, name)
    T = tasks.seq_len(task, args.n_digits)
    run_dir = os.path.join(args.out_dir, run_name(task, name, seed))
    ckpt_path = os.path.join(run_dir, "ckpt.pt")
    ckpt = resume_point(args, task, name, seed)
    os.makedirs(run_dir, exist_ok=True)

    torch.manual_seed(seed)  # model init and dropout
    model = Model(config).to(device)
    optimizer = model.configure_optimizers(args.lr, args.weight_decay)
    data_gen = torch.Generator(device=device).manual_seed(seed)  # the data stream, apart from init
    stats = model.compute_stats(T)
    it, history, wall, resumed = 0, [], 0.0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        data_gen.set_state(ckpt["data_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device == "cuda" and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state(ckpt["cuda_rng"])
        it, history, wall, resumed = ckpt["iter"], ckpt["history"], ckpt["wall_s"], ckpt.get("resumed", [])
        changed = setting_changes(ckpt.get("settings", {}), run_config(args)) if "settings" in ckpt else {}
        if changed:  # only RESUMABLE ones get here: say in the record what happened
            resumed = resumed + [{"iter": it, "changed": changed}]
        print(f"resuming {run_dir} from iter {it}" + (f" with new {', '.join(changed)}" if changed else ""))
    meter = PassMeter(model, ckpt["passes"] if ckpt is not None else None)  # executed passes, train and eval
    fwd = torch.compile(model) if args.compile else model  # the uncompiled model is what we save

    print(f"{run_name(task, name, seed)}: {describe(config, stats, T)}, {args.max_iters} iters")

    def checkpoint():
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": asdict(config),
            "iter": it, "data_rng": data_gen.get_state(), "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if device == "cuda" else {}),
            "history": history, "wall_s": wall, "passes": meter.state, "settings": run_config(args),
            "resumed": resumed, "task": task, "seed": seed, "n_digits": args.n_digits})

    # Ctrl-C is taken between iterations, so the checkpoint it writes resumes exactly;
    # a second Ctrl-C interrupts at once.
    stop = []

    def on_sigint(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)

    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    model.train()
    t_log, tokens_log, loss = time.time(), 0, None
    try:
        while it < args.max_iters and not stop:
            for group in optimizer.param_groups:
                group["lr"] = get_lr(it, args)
            idx, targets = tasks.get_batch(task, args.n_digits, args.batch_size, data_gen, device)
            logits, loss = fwd(idx, targets)
            lossf = loss.item()
            if not math.isfinite(lossf):
                raise FloatingPointError(f"loss is {lossf} at iter {it}; the last good checkpoint is kept")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            it += 1
            tokens_log += idx.numel()
            if it % args.log_interval == 0 or it == args.max_iters:
                sync(device)
                dt = time.time() - t_log
                wall += dt
                mask = targets != artrm.IGNORE_INDEX
                tok_acc = (logits.argmax(-1)[mask] == targets[mask]).float().mean().item()
                eta = wall / it * (args.max_iters - it) if it else 0.0
                print(f"iter {it:05d}/{args.max_iters:05d} ({100 * it / args.max_iters:5.1f}%) | "
                      f"loss {lossf:.4f} | tok_acc {tok_acc:.3f} | passes "
                      f"{meter.mean_steps('train') * config.passes_per_step:.1f}/{config.budget} | "
                      f"{tokens_log / dt:,.0f} tok/s | eta {fmt_time(eta)}")
                t_log, tokens_log = time.time(), 0
            if it % args.eval_interval == 0 or it == args.max_iters:
                sync(device)
                t_eval = time.time()
                ev = evaluate(model, task, [args.n_digits], args.eval_examples, device, args.temperature)
                r = ev[str(args.n_digits)]
                history.append({"iter": it, "loss": lossf, "char_acc": r["char_acc"], "seq_acc": r["seq_acc"],
                                "last_acc": r["pos_acc"][-1]})
                print(f"eval iter {it}: L={args.n_digits} char_acc {r['char_acc']:.3f} "
                      f"seq_acc {r['seq_acc']:.3f}")
                t_log += time.time() - t_eval  # evaluation stays out of the training clock
            if args.ckpt_interval and it % args.ckpt_interval == 0 and it < args.max_iters:
                checkpoint()
    except KeyboardInterrupt:
        stop.append("twice")
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    if stop:
        if stop[-1] != "twice":  # the state is between two iterations: safe to save
            checkpoint()
        raise Interrupted(f"interrupted at iter {it}; last checkpoint in {ckpt_path}. Resume with: "
                          f"{resume_command(args)}")
    checkpoint()

    meter.reset("eval")  # executed passes of the final evaluation only
    try:
        final = evaluate(model, task, args.eval_lengths, args.eval_examples, device, args.temperature, show=3)
        if args.eval_budgets:  # thinking longer or shorter at test time, recorded beside the run
            evaluate_budgets(model, task, seed, args, device, ckpt_path, it)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted in the final evaluation; the checkpoint at iter {it} is in {ckpt_path}. "
                          f"Resume with: {resume_command(args)}") from None
    exec_train = meter.mean_steps("train")
    return {
        "model": config.model, "name": name, "task": task, "seed": seed, "budget": config.budget,
        "n_digits": args.n_digits,
        "iters": it, **stats,
        "executed_block_passes_train": exec_train * config.passes_per_step,
        "executed_block_passes_eval": meter.mean_steps("eval") * config.passes_per_step,
        "early_exit_fraction_train": meter.early_fraction("train"),
        "early_exit_fraction_eval": meter.early_fraction("eval"),
        "executed_train_flops_per_token": model.compute_stats(T, steps=exec_train)["train_flops_per_token"],
        "train_tokens": it * args.batch_size * T,
        "wall_s": wall, "final_loss": loss.item() if loss is not None else history[-1]["loss"],
        "eval": final, "history": history, "status": "ok", "resumed": resumed,
        "config": run_config(args), "device": device, "hardware": hardware(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "code": code_version(),
    }


class Interrupted(Exception):
    pass


def resume_command(args):
    return "python train.py " + " ".join(args.argv + ([] if "--resume" in args.argv else ["--resume"]))


def describe(config, stats, T):
    return (f"{stats['params']:,} params | {config.n_steps} steps x {config.passes_per_step} = "
            f"{stats['block_passes']} block passes/token, {stats['grad_block_passes']} with gradient | "
            f"{stats['train_flops_per_token'] / 1e6:.1f} MFLOP/token to train (T={T})")


def run_config(args):
    """The settings that define a run (not where it is written or how it is driven)."""
    skip = {"model", "task", "seed", "seeds", "out_dir", "resume", "eval_only", "ckpt", "plot", "device", "compile",
            "ckpt_interval", "models", "tasks", "flops_match", "jobs", "threads", "shard", "shard_k", "shard_n",
            "report", "given", "argv"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

# -----------------------------------------------------------------------------
# Where a number was measured, and a file written whole or not at all.

UMASK = os.umask(0)
os.umask(UMASK)  # (read without changing it)


def atomic_write(path, write):
    """Write a file whole or not at all: into a temporary file of its own (a unique name,
    so that concurrent writers never share one), then renamed over the target."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # as open() would make it (mkstemp's 0600 would hide records from others)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def code_version():
    """The git commit of this code, '+dirty' if it has uncommitted changes ('unknown' outside git)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, timeout=10).stdout
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "*.py").strip()
        return (commit + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu} ({torch.get_num_threads()} threads)" + (" + Apple MPS" if device == "mps" else "")


def main(argv=None):
    try:
        args = parse_args(argv)
        validate(args)
        import grid  # the comparison: one run is a grid of one; --report and --eval_only read a grid's runs
        if args.eval_only:
            return grid.eval_only(args, get_device(args.device))
        return grid.report(args) if args.report else grid.compare(args, get_device(args.device))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
