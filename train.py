"""
Train one rung of the ladder on one task, top to bottom: settings, device, data, model
(fresh or resumed), evaluation, learning-rate schedule, the loop, the record.

    python train.py --model ar_trm --task reverse               # one run, laptop preset
    python train.py --preset paper --model ut --task addition   # one run at the paper's setting

A run lives in <out_dir>/<task>_<model>_s<seed>/: train.log, ckpt.pt and, once it has
ended, record.json. The same command again skips a finished run; --resume continues an
interrupted one exactly. Many runs, or what is made of their records, are the lab's job,
and this file hands such a request over unchanged: a comparison (several models, tasks or
seeds, --jobs, --shard, --plot, --flops_match, --eval_budgets) to grid.py, --report to
report.py, --eval_only to evaluate.py.
"""

import argparse
import contextlib
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, fields

import torch

import artrm
import tasks
from artrm import Config, Model, RUNGS
from records import UserError, atomic_write, read_record, run_name, write_json
from tasks import TASKS

# -----------------------------------------------------------------------------
# Settings: every flag of one run, its default (the laptop preset) and what it does.
SETTINGS = dict(
    model=("ar_trm", "the rung; rung+full_grad etc. adds extensions (a list or all: grid.py)"),
    task=("reverse", "the task (a list or all: grid.py)"),
    seed=(1337, "data stream and init both derive from it"),
    budget=(12, "block passes per token per forward (must suit the rung)"),
    n_embd=(64, "width d"),
    n_head=(4, "attention heads (n_embd must be a multiple of it)"),
    dropout=(0.0, "on the attention probabilities and the attention and MLP outputs"),
    block_size=(64, "longest input the learned positions cover"),
    n_outer=(2, "H, nested rungs"),
    n_inner=(2, "L, nested rungs"),
    ponder_weight=(0.0, "ACT ponder cost weight (the paper: 0)"),
    halt_explore=(0.25, "ar_trm in training: chance a sequence must run a drawn minimum of steps (the paper's)"),
    full_grad=(False, "extension: nested rungs backprop through every pass"),
    deep_supervision=(False, "extension: loss on y after every step (TRM)"),
    halt_loss=(False, "extension: train ar_trm's halting head (TRM)"),
    n_digits=(6, "training operand length L"),
    eval_lengths=("6,12", "comma list of operand lengths to evaluate"),
    eval_examples=(100, "fixed held-out examples per length"),
    eval_interval=(250, "evaluate every this many iters (and at the end)"),
    log_interval=(50, "progress line every this many iters"),
    max_iters=(1500, "training iterations (one fresh batch each)"),
    batch_size=(64, "examples per iteration"),
    lr=(3e-3, "AdamW peak learning rate"),
    weight_decay=(0.01, "AdamW, on every parameter (as the authors)"),
    warmup_iters=(100, "linear warm-up"),
    decay_lr=(True, "cosine decay to lr/10 after warm-up (False: constant, as the paper)"),
    grad_clip=(1.0, "clip the gradient norm at this (0: off, as the paper)"),
    temperature=(0.0, "evaluation decoding: 0 greedy, 1 samples as the paper's code"),
    device=("auto", "auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)"),
    threads=(0, "CPU threads (0: torch's default)"),
    compile=(False, "torch.compile the model (CUDA only)"),
    out_dir=("out", "one directory per run: record.json, train.log, ckpt.pt"),
    ckpt_interval=(0, "also checkpoint every this many iters (0: only at the end)"),
    resume=(False, "continue an interrupted run from its checkpoint (a finished run is always skipped)"),
)
DEFAULTS = {k: v for k, (v, _) in SETTINGS.items()}
PRESETS = {
    "laptop": {},  # the defaults above: whole ladder x 3 tasks in minutes on 2 CPU cores
    "paper": dict(budget=24, n_embd=384, n_head=6, dropout=0.1, block_size=180, n_digits=10,
                  eval_lengths="10,20,30,40,50", eval_examples=100, eval_interval=250,
                  max_iters=5000, batch_size=64, lr=3e-4, weight_decay=0.01, warmup_iters=0,
                  decay_lr=False, grad_clip=0.0),
}
POSITIVE = ("n_digits", "max_iters", "batch_size", "eval_examples", "eval_interval", "log_interval", "lr")
NON_NEGATIVE = ("warmup_iters", "weight_decay", "grad_clip", "temperature", "threads", "ckpt_interval")
# (budget, n_embd, n_head, dropout, ponder_weight, halt_explore, ...: Config checks them)
RESUMABLE = ("max_iters", "eval_lengths", "eval_examples", "eval_interval", "log_interval", "temperature")
NOT_THE_RUN = ("model", "task", "seed", "device", "threads", "compile", "out_dir", "ckpt_interval", "resume")
LAB = {"--report": "report.py", "--eval_only": "evaluate.py"}  # any other flag of the lab: grid.py
EXTENSIONS = ("full_grad", "deep_supervision", "halt_loss")  # a model name may carry them: ar_trm+full_grad
EVAL_SEED = 10_000_019  # held-out examples come from their own stream, apart from training's
HERE = os.path.dirname(os.path.abspath(__file__))


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every other bad input (argparse would add its usage)
        raise UserError(f"{message} (python {os.path.basename(self.prog)} -h lists every flag)")


def parser(lab=None, doc=__doc__):
    """The flags of one run (and of the lab, where it passes its own: name -> (default, help))."""
    p = ArgumentParser(prog=os.path.basename(sys.argv[0]), description=doc.split("\n\n")[0].strip(),
                       epilog=None if lab else "A comparison's flags: python grid.py -h; --report: python "
                       "report.py -h; --eval_only: python evaluate.py -h")
    p.add_argument("--preset", choices=sorted(PRESETS), default="laptop", help="named settings (default: laptop)")
    for k, (v, what) in {**SETTINGS, **(lab or {})}.items():
        paper = f"; paper: {PRESETS['paper'][k]}" if k in PRESETS["paper"] else ""
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(v, bool) else \
            dict(type=type(v), metavar=type(v).__name__.upper())
        p.add_argument(f"--{k}", default=None, help=f"{what} (default: {v}{paper})", **kind)
    return p


def parse_args(argv=None, lab=None, doc=__doc__):
    a = parser(lab, doc).parse_args(argv)
    given = {k: v for k, v in vars(a).items() if v is not None and k != "preset"}
    defaults = {k: v for k, (v, _) in {**SETTINGS, **(lab or {})}.items()}
    args = argparse.Namespace(**{**defaults, **PRESETS[a.preset], **given, "preset": a.preset})
    args.given, args.argv = sorted(given), list(sys.argv[1:] if argv is None else argv)
    args.models, args.tasks = expand(args.model, RUNGS, "model"), expand(args.task, TASKS, "task")
    try:
        args.eval_lengths = [int(s) for s in str(args.eval_lengths).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--eval_lengths takes a comma list of whole numbers, got {args.eval_lengths!r}") from None
    if not args.eval_lengths:
        raise UserError("--eval_lengths names no length")
    return args


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


def model_config(args, name):
    """The Config of a model name such as 'ar_trm' or 'ar_trm+full_grad', with the run's settings."""
    rung, *ext = name.split("+")
    settings = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(Config)}}
    try:
        return Config(**{**settings, **{e: True for e in ext}, "model": rung, "vocab_size": len(tasks.VOCAB)})
    except ValueError as e:
        raise UserError(f"{name}: {e}") from None


def validate(args):
    """Check every setting before any work, so that bad input never costs a run or a file."""
    for k, v in vars(args).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"--{k} must be a finite number, got {v}")
    for k in POSITIVE + NON_NEGATIVE:
        if getattr(args, k) < 0 or (getattr(args, k) == 0 and k in POSITIVE):
            raise UserError(f"--{k} must be {'positive' if k in POSITIVE else 'zero or positive'}, got {getattr(args, k)}")
    if any(n <= 0 for n in args.eval_lengths):
        raise UserError(f"--eval_lengths must be positive, got {args.eval_lengths}")
    for m in args.models:
        model_config(args, m)
    for task in args.tasks:
        check_fits(task, [args.n_digits] + args.eval_lengths, args.block_size, "--block_size")
    if not args.out_dir.strip():
        raise UserError("--out_dir is empty")
    existing = os.path.abspath(args.out_dir)
    while not os.path.exists(existing):  # the nearest part of the path that exists must be a writable directory
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--out_dir {args.out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out_dir {args.out_dir}: {existing} is not writable")
    if get_device(args.device) != "cuda" and args.compile:  # --device auto picks CUDA where there is one
        raise UserError("--compile is offered on CUDA only")


def check_fits(task, lengths, block_size, whose):
    for n in lengths:
        if tasks.seq_len(task, n) > block_size:
            raise UserError(f"{task} at length {n} needs {tasks.seq_len(task, n)} tokens, more than "
                            f"{whose} {block_size}")

# -----------------------------------------------------------------------------
# Device: CUDA, then Apple MPS, then the CPU; fp32 everywhere.

def get_device(name):
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available())}
    if name == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if name not in available:
        raise UserError(f"unknown device {name!r}; choose from auto, cpu, cuda, mps")
    if not available[name]:
        raise UserError(f"device {name} is not available on this machine")
    return name


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()

# -----------------------------------------------------------------------------
# Evaluation: batched decoding of the answer from the prompt, no teacher forcing.

def eval_set(task, n_digits, n_examples, device):
    g = torch.Generator().manual_seed(EVAL_SEED + n_digits)  # fixed, identical on every device
    return tasks.make_examples(task, n_digits, n_examples, g).to(device)


@torch.no_grad()
def evaluate(model, task, lengths, n_examples, device, temperature=0.0, show=0, n_steps=None, extend="cycle"):
    """Per length: char_acc, seq_acc, accuracy by answer position and the block passes executed
    per token, greedy (or sampled) on the fixed examples. n_steps: see Model.forward."""
    was_training = model.training
    model.eval()
    results, steps = {}, []  # steps: the executed steps per position of every decoding forward
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

# -----------------------------------------------------------------------------
# What out_dir already holds of a run: finished (skipped), a checkpoint to resume, or nothing.

def run_config(args):
    """The settings that define a run (not where it is written or how it is driven)."""
    return {k: v for k, v in vars(args).items() if (k in DEFAULTS or k == "preset") and k not in NOT_THE_RUN}


def setting_changes(old, new):
    """{setting: [old, new]} where new differs from old. A setting an older record lacks
    had its default then (a new knob defaults to the old behaviour)."""
    before = {**DEFAULTS, "preset": "laptop"}
    return {k: [old.get(k, before.get(k)), v] for k, v in new.items() if old.get(k, before.get(k)) != v}


def check_same_run(changes, where, resume):
    """Refuse to resume or re-run a run with settings that change what it trains."""
    defining = {k: v for k, v in changes.items() if k not in RESUMABLE}
    if defining:
        said = "; ".join(f"{k} {a!r} there, {b!r} asked" for k, (a, b) in defining.items())
        raise UserError(f"{where} was trained with other settings ({said}); use another --out_dir for a new run")
    if changes and not resume:
        raise UserError(f"{where} differs in {', '.join(changes)}; add --resume to continue it with the new "
                        f"value(s), or use another --out_dir")


def prior(args):
    """'finished' (the run is skipped), the checkpoint it resumes from, or None (it starts
    afresh): what args.out_dir holds of the run args asks for, checked before any work."""
    where = os.path.join(args.out_dir, run_name(args.task, args.model, args.seed))
    path = os.path.join(where, "ckpt.pt")
    record = read_record(os.path.join(where, "record.json"))
    if record and record.get("status") == "ok":
        changes = setting_changes(record["config"], run_config(args))
        check_same_run(changes, where, args.resume)
        if not changes:
            print(f"{run_name(args.task, args.model, args.seed)} is finished in {where}; skipped")
            return "finished"
        if not os.path.exists(path):  # --resume with new values of RESUMABLE settings continues it
            raise UserError(f"{where} is finished but has no checkpoint to continue from with new "
                            f"{', '.join(changes)}; use another --out_dir")
    elif not args.resume:
        if os.path.exists(path) and record is None:  # interrupted: never start it over silently
            raise UserError(f"{where} holds the checkpoint of an unfinished run; add --resume to continue it, "
                            f"or move it away to start over")
        return None  # a fresh run, or a failed one starting over
    ckpt = load_checkpoint(path)
    config = model_config(args, args.model)
    asked = {**asdict(config), **run_config(args)}
    check_same_run(setting_changes({**ckpt["config"], **ckpt["settings"]}, asked), path, True)
    with torch.device("meta"):  # the shapes of this code's model, without building it
        shapes = {k: v.shape for k, v in Model(config).state_dict().items()}
    if shapes != {k: v.shape for k, v in ckpt["model"].items()}:
        raise UserError(f"{path} was written by an artrm whose model differs from this one; use another --out_dir")
    if args.max_iters < ckpt["iter"]:
        raise UserError(f"{path} has trained {ckpt['iter']} iterations already, more than --max_iters {args.max_iters}")
    return ckpt

# -----------------------------------------------------------------------------
# Checkpoints are written whole or not at all, as records are (records.py).

CKPT_KEYS = {"model", "optimizer", "config", "settings", "iter", "data_rng", "torch_rng", "history", "wall_s", "passes"}


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

# -----------------------------------------------------------------------------
# One run: train one rung on one task with one seed.

def get_lr(it, args):
    if it < args.warmup_iters:
        return args.lr * (it + 1) / args.warmup_iters
    if not args.decay_lr:
        return args.lr
    ratio = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.lr / 10 + 0.5 * (1 + math.cos(math.pi * ratio)) * (args.lr - args.lr / 10)


class Interrupted(Exception):
    pass


def count_passes(model, passes):
    """Executed compute (a halting rung may stop before its budget): after each forward, in
    passes["train"] or passes["eval"], [forwards, early exits of the whole batch, mean steps run]."""
    def count(m, inputs, output):
        tally = passes["train" if m.training else "eval"]
        tally[0] += 1
        tally[1] += int(m.last_steps.max() < m.last_n_steps)  # a sync, as the readouts make per step
        tally[2] += float(m.last_steps.mean())
    return model.register_forward_hook(count)


def train_run(args, device, ckpt=None):
    """Train the run args asks for (from its checkpoint, if one is given); return its record."""
    task, name, seed = args.task, args.model, args.seed
    config, T = model_config(args, name), tasks.seq_len(task, args.n_digits)
    ckpt_path = os.path.join(args.out_dir, run_name(task, name, seed), "ckpt.pt")
    torch.manual_seed(seed)  # model init and dropout
    model = Model(config).to(device)
    optimizer = model.configure_optimizers(args.lr, args.weight_decay)
    data_gen = torch.Generator(device=device).manual_seed(seed)  # the data stream, apart from init
    stats = model.compute_stats(T)
    it, history, wall, resumed = 0, [], 0.0, []
    passes = {"train": [0, 0, 0.0], "eval": [0, 0, 0.0]}  # forwards, early exits, sum of mean steps run
    code = [code_version()]  # the code this run starts on (and, when resumed, each it ran on)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        data_gen.set_state(ckpt["data_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device == "cuda" and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state(ckpt["cuda_rng"])
        it, history, wall, passes = ckpt["iter"], ckpt["history"], ckpt["wall_s"], ckpt["passes"]
        resumed, code = ckpt.get("resumed", []), ckpt.get("code", []) + code
        changed = setting_changes(ckpt["settings"], run_config(args))
        if changed:  # only RESUMABLE ones get here: say in the record what happened
            resumed = resumed + [{"iter": it, "changed": changed}]
        print(f"resuming {ckpt_path} from iter {it}" + (f" with new {', '.join(changed)}" if changed else ""))
    count_passes(model, passes)
    mean_steps = lambda mode: passes[mode][2] / max(passes[mode][0], 1)
    fwd = torch.compile(model) if args.compile else model  # the uncompiled model is what we save
    print(f"{run_name(task, name, seed)}: {describe(config, stats, T)}, {args.max_iters} iters")

    def checkpoint():
        atomic_write(ckpt_path, lambda f: torch.save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": asdict(config),
            "iter": it, "data_rng": data_gen.get_state(), "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if device == "cuda" else {}),
            "history": history, "wall_s": wall, "passes": passes, "settings": run_config(args),
            "resumed": resumed, "code": code, "task": task, "seed": seed, "n_digits": args.n_digits}, f))

    # A first SIGINT (Ctrl-C) or SIGTERM (kill, a scheduler's time limit) is taken between two
    # iterations, so the checkpoint it writes resumes exactly; a second one stops at once. Not
    # the copies of one: a scheduler signals every process of a job, and a grid passes the
    # signal on as well, so the same signal can arrive more than once within a moment.
    stop = []  # (signal name, when)

    def on_signal(signum, frame):
        if stop and time.time() - stop[0][1] > 1.0:  # a second signal, or one in the final evaluation
            raise KeyboardInterrupt
        stop.append((signal.Signals(signum).name, time.time()))

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
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
                print(f"iter {it:05d}/{args.max_iters:05d} ({100 * it / args.max_iters:5.1f}%) | "
                      f"loss {lossf:.4f} | tok_acc {tok_acc:.3f} | passes "
                      f"{mean_steps('train') * config.passes_per_step:.1f}/{config.budget} | "
                      f"{tokens_log / dt:,.0f} tok/s | eta {fmt_time(wall / it * (args.max_iters - it))}")
                t_log, tokens_log = time.time(), 0
            if it % args.eval_interval == 0 or it == args.max_iters:
                sync(device)
                t_eval = time.time()
                r = evaluate(model, task, [args.n_digits], args.eval_examples, device, args.temperature)
                r = r[str(args.n_digits)]
                history.append({"iter": it, "loss": lossf, "char_acc": r["char_acc"], "seq_acc": r["seq_acc"],
                                "last_acc": r["pos_acc"][-1]})
                print(f"eval iter {it}: L={args.n_digits} char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f}")
                t_log += time.time() - t_eval  # evaluation stays out of the training clock
            if args.ckpt_interval and it % args.ckpt_interval == 0 and it < args.max_iters:
                checkpoint()
        checkpoint()  # at the end, or where a first signal stopped the loop
        if stop:
            raise Interrupted(f"interrupted ({stop[0][0]}) at iter {it}; its checkpoint is in {ckpt_path}. "
                              f"Resume with: {resume_command(args)}")
        stop.append(("evaluating", -math.inf))  # from here a signal stops at once: nothing is left to save
        passes["eval"] = [0, 0, 0.0]  # executed passes of the final evaluation only
        final = evaluate(model, task, args.eval_lengths, args.eval_examples, device, args.temperature, show=3)
        print("final evaluation: " + " | ".join(f"L={n} char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f}"
                                                 for n, r in final.items()))
    except KeyboardInterrupt:  # a second signal: at once, leaving the last checkpoint as it was
        where = "in the final evaluation" if stop and stop[-1][0] == "evaluating" else f"twice, at iter {it}"
        raise Interrupted(f"interrupted {where}; the last checkpoint saved is in {ckpt_path}. "
                          f"Resume with: {resume_command(args)}") from None
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return {
        "model": config.model, "name": name, "task": task, "seed": seed, "budget": config.budget,
        "n_digits": args.n_digits, "iters": it, **stats,
        "executed_block_passes_train": mean_steps("train") * config.passes_per_step,
        "executed_block_passes_eval": mean_steps("eval") * config.passes_per_step,
        "early_exit_fraction_train": passes["train"][1] / max(passes["train"][0], 1),
        "early_exit_fraction_eval": passes["eval"][1] / max(passes["eval"][0], 1),
        "executed_train_flops_per_token": model.compute_stats(T, steps=mean_steps("train"))["train_flops_per_token"],
        "train_tokens": it * args.batch_size * T,
        "wall_s": wall, "final_loss": loss.item() if loss is not None else history[-1]["loss"],
        "eval": final, "history": history, "status": "ok", "resumed": resumed,
        "config": run_config(args), "device": device, "hardware": hardware(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "code": code[0], **({"code_resumed": code[1:]} if len(set(code)) > 1 else {}),
    }


def resume_command(args):
    return "python train.py " + " ".join(args.argv + ([] if "--resume" in args.argv else ["--resume"]))


def describe(config, stats, T):
    return (f"{stats['params']:,} params | {config.n_steps} steps x {config.passes_per_step} = "
            f"{stats['block_passes']} block passes/token, {stats['grad_block_passes']} with gradient | "
            f"{stats['train_flops_per_token'] / 1e6:.1f} MFLOP/token to train (T={T})")


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def code_version():
    """The git commit of this code, '+dirty' if its Python files have uncommitted changes."""
    git = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, timeout=10).stdout
    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "*.py").strip()
        return (git("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")) or "unknown"
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


class Tee:
    """Output to the console and to the run's train.log at once (line by line: tail -f works)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        return [s.write(text) for s in self.streams][0]

    def flush(self):
        for s in self.streams:
            s.flush()


def lab_for(argv):
    """The lab's file for a request with a flag of the lab's or for several runs (None: one run)."""
    flags = {a.split("=")[0] for a in argv if a.startswith("--")}
    own = {"--preset", "--help"} | {f"--{no}{k}" for k in SETTINGS for no in ("", "no-")}
    if lab := next((LAB[f] for f in flags if f in LAB), "grid.py" if flags - own else None):
        return lab
    args = parse_args(argv)
    return "grid.py" if len(args.models) * len(args.tasks) > 1 else None


def hand_over(lab, argv):
    """Run the lab's file with these flags, and pass a signal on to it once (Ctrl-C, kill, a
    scheduler's SIGTERM): in a session of its own, a terminal's Ctrl-C reaches it from here only."""
    p = subprocess.Popen([sys.executable, os.path.join(HERE, lab), *argv], start_new_session=True)
    handlers = {s: signal.signal(s, lambda signum, frame: p.send_signal(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return p.wait()
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if lab := lab_for(argv):  # many runs, or what is made of them: the lab's job, with the very same flags
            return hand_over(lab, argv)
        args = parse_args(argv)
        args.model, args.task = args.models[0], args.tasks[0]
        validate(args)
        ckpt = prior(args)
        if ckpt == "finished":
            return 0
        device = get_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        run_dir = os.path.join(args.out_dir, run_name(args.task, args.model, args.seed))
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "train.log"), "a", buffering=1) as log, \
                contextlib.redirect_stdout(Tee(sys.stdout, log)), contextlib.redirect_stderr(Tee(sys.stderr, log)):
            try:
                record = train_run(args, device, ckpt)
            except Interrupted as e:  # the run's log says so too
                print(e, file=sys.stderr)
                return 130
            except Exception as e:  # a diverged (or broken) run is recorded as failed
                if not isinstance(e, FloatingPointError):
                    traceback.print_exc()
                print(f"run {run_dir} failed: {e}", file=sys.stderr)
                record = {"model": args.model.split("+")[0], "name": args.model, "task": args.task, "seed": args.seed,
                          "status": "failed", "error": f"{type(e).__name__}: {e}", "config": run_config(args)}
            print(summary(record))
        write_json(os.path.join(run_dir, "record.json"), record)
        return 0 if record["status"] == "ok" else 1
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def summary(record):
    """One line of a finished run's key numbers."""
    name = run_name(record["task"], record["name"], record["seed"])
    if record["status"] != "ok":
        return f"{name} FAILED: {record.get('error', '')}"
    L = str(record["n_digits"])
    ev = record["eval"][L] if L in record["eval"] else {"char_acc": float("nan"), "seq_acc": float("nan")}
    return (f"{name}: char_acc {ev['char_acc']:.3f} seq_acc {ev['seq_acc']:.3f} at L={L} | loss "
            f"{record['final_loss']:.3f} | passes {record['executed_block_passes_train']:.1f}/"
            f"{record['block_passes']} | {fmt_time(record['wall_s'])}")


if __name__ == "__main__":
    sys.exit(main())
