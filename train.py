"""
Train and evaluate rungs of the ladder, and compare them at a matched budget.

    python train.py --model ar_trm --task reverse          # one run (laptop preset)
    python train.py --model all --task all --seeds 3       # the compute-matched comparison
    python train.py --model all --task addition --preset paper
    python train.py --eval_only --model dense --task reverse --eval_lengths 6,8
    python train.py --bench --model dense --preset paper   # speed figures for this machine

Every run prints and stores its parameters, block passes per token (the budget and
what was actually executed), the passes that carry gradient, and training FLOPs.
"""

import argparse
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import asdict, fields

import torch

import artrm
import tasks
from artrm import Config, Model, RUNGS
from tasks import TASKS

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
    n_head=4,
    dropout=0.0,           # on attention and MLP outputs
    block_size=64,         # longest input the learned positions cover
    n_outer=2,             # H, nested rungs
    n_inner=2,             # L, nested rungs
    ponder_weight=0.0,     # ACT ponder cost weight (the paper: 0)
    full_grad=False,       # extension: nested rungs backprop through every pass
    deep_supervision=False,  # extension: loss on y after every step (TRM)
    halt_loss=False,       # extension: train ar_trm's halting head (TRM)
    flops_match="",        # a model: each run trains for the FLOPs that model spends in max_iters (ceiling)
    n_digits=6,            # training operand length L
    eval_lengths="6,12",   # comma list of operand lengths to evaluate
    eval_examples=100,     # fixed held-out examples per length
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
    out_dir="out",         # results.json, results.md and one directory per run
    ckpt_interval=0,       # also checkpoint every this many iters (0: only at the end)
    resume=False,          # continue runs from their checkpoints; in compare mode skip finished runs
    eval_only=False,       # evaluate saved checkpoints, no training
    ckpt="",               # with --eval_only: a checkpoint file to evaluate (default: the run's own)
    plot=False,            # write PNG plots (needs matplotlib)
    bench=False,           # time training and evaluation instead of training a run
    profile=False,         # with --bench: print torch.profiler's table of one training step
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
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
    args.models = expand(args.model, RUNGS, "model")
    args.tasks = expand(args.task, TASKS, "task")
    args.eval_lengths = [int(s) for s in str(args.eval_lengths).split(",") if s.strip()] if args.eval_lengths else []
    return args


EXTENSIONS = ("full_grad", "deep_supervision", "halt_loss")  # a model name may carry them: ar_trm+full_grad


def expand(value, choices, what):
    names = list(choices) if value == "all" else [s.strip() for s in value.split(",") if s.strip()]
    for n in names:
        base, *ext = n.split("+")
        if base not in choices or (ext and what != "model") or any(e not in EXTENSIONS for e in ext):
            more = f"; add extensions as rung+{'+'.join(EXTENSIONS)}" if what == "model" else ""
            raise UserError(f"unknown {what} {n!r}; choose from {', '.join(choices)} or all{more}")
    return names


def ladder_order(names):
    """Model names in ladder order, each rung's extensions after it."""
    return sorted(set(names), key=lambda n: (RUNGS.index(n.split("+")[0]), n))


def model_config(args, name):
    """The Config of a model name such as 'ar_trm' or 'ar_trm+full_grad', with the run's settings."""
    rung, *ext = name.split("+")
    keys = {f.name for f in fields(Config)}
    settings = {k: v for k, v in vars(args).items() if k in keys}
    return Config(**{**settings, **{e: True for e in ext}, "model": rung, "vocab_size": len(tasks.VOCAB)})


def validate(args):
    """Check everything before any run starts, so bad input never costs a finished run."""
    for name in ("n_digits", "max_iters", "batch_size", "eval_examples", "seeds", "eval_interval", "log_interval"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
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
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UserError(f"--out_dir {args.out_dir} is a file, not a directory")
    if args.compile and get_device(args.device) != "cuda":  # --device auto picks CUDA where there is one
        raise UserError("--compile is offered on CUDA only")


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
        self.n_steps = model.config.n_steps
        self.state = state or {"train": [0, 0, 0.0], "eval": [0, 0, 0.0]}  # forwards, early exits, steps
        model.register_forward_hook(self.hook)

    def reset(self, mode):
        self.state[mode] = [0, 0, 0.0]

    def hook(self, model, inputs, output):
        tally = self.state["train" if model.training else "eval"]
        tally[0] += 1
        tally[1] += int(model.last_steps.max() < self.n_steps)  # a sync, as the readouts do per step
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
def evaluate(model, task, lengths, n_examples, device, temperature=0.0, show=0):
    was_training = model.training
    model.eval()
    results = {}
    for n in lengths:
        ex = eval_set(task, n, n_examples, device)
        P, A = tasks.prompt_len(task, n), tasks.answer_len(task, n)
        g = torch.Generator(device=device).manual_seed(EVAL_SEED) if temperature > 0 else None
        out = model.generate(ex[:, :P], A, temperature=temperature, generator=g)
        right = out[:, P:] == ex[:, P:P + A]                                    # (B, A)
        results[str(n)] = {"char_acc": right.float().mean().item(),
                           "seq_acc": right.all(1).float().mean().item(),
                           "pos_acc": [round(v, 4) for v in right.float().mean(0).tolist()]}
        for i in torch.nonzero(~right.all(1)).flatten()[:show].tolist():
            said = tasks.decode(out[i, :P + A]).replace("\n", "\\n")
            print(f"  L={n}: model says {said} but it is {tasks.decode(ex[i, P:P + A])}")
    model.train(was_training)
    return results

# -----------------------------------------------------------------------------
# Checkpoints: written to a temporary file, then renamed, so a kill at any instant
# leaves the old checkpoint or the new one, never a torn one.

def save_checkpoint(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, foreign file: all one message
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def check_matches(ckpt, config, path):
    mismatch = [f"{k}: checkpoint {ckpt['config'].get(k)!r} vs asked {v!r}"
                for k, v in asdict(config).items() if ckpt["config"].get(k) != v]
    if mismatch:
        raise UserError(f"checkpoint {path} does not match the requested config ({'; '.join(mismatch)}); "
                        f"use another --out_dir, or --eval_only to evaluate it as it is")

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


def train_run(args, task, name, seed, device, label=""):
    """Train (or resume) one run of model `name` and return its results record."""
    config = model_config(args, name)
    T = tasks.seq_len(task, args.n_digits)
    run_dir = os.path.join(args.out_dir, run_name(task, name, seed))
    ckpt_path = os.path.join(run_dir, "ckpt.pt")
    ckpt = None
    if args.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path)
        check_matches(ckpt, config, ckpt_path)
    os.makedirs(run_dir, exist_ok=True)

    torch.manual_seed(seed)  # model init and dropout
    model = Model(config).to(device)
    optimizer = model.configure_optimizers(args.lr, args.weight_decay)
    data_gen = torch.Generator(device=device).manual_seed(seed)  # the data stream, apart from init
    stats = model.compute_stats(T)
    it, history, wall = 0, [], 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        data_gen.set_state(ckpt["data_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device == "cuda" and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state(ckpt["cuda_rng"])
        it, history, wall = ckpt["iter"], ckpt["history"], ckpt["wall_s"]
        print(f"{label}resuming {run_dir} from iter {it}")
    meter = PassMeter(model, ckpt["passes"] if ckpt is not None else None)  # executed passes, train and eval
    fwd = torch.compile(model) if args.compile else model  # the uncompiled model is what we save

    print(f"{label}{run_name(task, name, seed)}: {describe(config, stats, T)}, {args.max_iters} iters")

    def checkpoint():
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": asdict(config),
            "iter": it, "data_rng": data_gen.get_state(), "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if device == "cuda" else {}),
            "history": history, "wall_s": wall, "passes": meter.state,
            "task": task, "seed": seed, "n_digits": args.n_digits})

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
                print(f"{label}iter {it:05d}/{args.max_iters:05d} ({100 * it / args.max_iters:5.1f}%) | "
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
                print(f"{label}eval iter {it}: L={args.n_digits} char_acc {r['char_acc']:.3f} "
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
                          f"python {' '.join(sys.argv)} --resume")
    checkpoint()

    meter.reset("eval")  # executed passes of the final evaluation only
    final = evaluate(model, task, args.eval_lengths, args.eval_examples, device, args.temperature, show=3)
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
        "eval": final, "history": history, "status": "ok",
        "config": run_config(args), "device": device, "torch": torch.__version__,
    }


class Interrupted(Exception):
    pass


def describe(config, stats, T):
    return (f"{stats['params']:,} params | {config.n_steps} steps x {config.passes_per_step} = "
            f"{stats['block_passes']} block passes/token, {stats['grad_block_passes']} with gradient | "
            f"{stats['train_flops_per_token'] / 1e6:.1f} MFLOP/token to train (T={T})")


def run_config(args):
    """The settings that define a run (not where it is written or how it is driven)."""
    skip = {"model", "task", "seed", "seeds", "out_dir", "resume", "eval_only", "ckpt", "plot", "bench", "profile",
            "device", "compile", "ckpt_interval", "models", "tasks", "flops_match"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

# -----------------------------------------------------------------------------
# Results: results.json is a list of run records, appended as each run finishes.

def read_results(path):
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            records = json.load(f)
        assert isinstance(records, list)
        return records
    except (ValueError, AssertionError):
        raise UserError(f"{path} is not a JSON list of run records; move it away (it is left as it is)") from None


def append_result(path, record):
    records = read_results(path) + [record]
    with open(path + ".tmp", "w") as f:
        json.dump(records, f, indent=1)
    os.replace(path + ".tmp", path)


def name_of(record):
    return record.get("name", record["model"])


def ok_runs(records, name):
    return [r for r in records if name_of(r) == name and r.get("status") == "ok"]


def same_config(old, new):
    """Same run settings. A knob missing from an older record had its default then (new
    knobs default to the old behaviour); knobs that no longer define a run are ignored."""
    return all(old.get(k, DEFAULTS.get(k)) == v for k, v in new.items())


def find_finished(records, task, name, seed, config):
    for r in ok_runs(records, name):
        if (r["task"], r["seed"]) == (task, seed) and same_config(r.get("config", {}), config):
            return r
    return None


def mean_std(values):
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values, digits=3):
    m, s = mean_std(values)
    return f"{m:.{digits}f}±{s:.{digits}f}"


def quarters(pos_acc):
    """Accuracy by output quarter, Q1 = earliest digits."""
    n = len(pos_acc)
    return [statistics.mean(pos_acc[q * n // 4: max((q + 1) * n // 4, q * n // 4 + 1)]) for q in range(4)]


def table_rows(records, lengths):
    """One row per model (ladder order), each value mean±std over its seeds."""
    header = ["model", "seeds", "params", "passes train/eval (budget)", "grad", "train MFLOP/tok exec (ceiling)",
              "wall s", "loss"] + [f"{k} L={n}" for n in lengths for k in ("char", "seq")]
    rows = []
    for name in ladder_order(name_of(r) for r in records):
        rs = ok_runs(records, name)
        if not rs:
            rows.append([name, "failed"] + [""] * (len(header) - 2))
            continue
        row = [name, str(len(rs)), f"{rs[0]['params']:,}",
               f"{statistics.mean(r['executed_block_passes_train'] for r in rs):.1f}/"
               f"{statistics.mean(r['executed_block_passes_eval'] for r in rs):.1f} ({rs[0]['block_passes']})",
               str(rs[0]["grad_block_passes"]),
               f"{statistics.mean(r['executed_train_flops_per_token'] for r in rs) / 1e6:.2f} "
               f"({rs[0]['train_flops_per_token'] / 1e6:.2f})",
               f"{statistics.mean(r['wall_s'] for r in rs):.0f}", pm((r["final_loss"] for r in rs), 3)]
        for n in lengths:
            row += [pm(r["eval"][str(n)]["char_acc"] for r in rs), pm(r["eval"][str(n)]["seq_acc"] for r in rs)]
        rows.append(row)
    return header, rows


def format_table(header, rows, markdown=False):
    if markdown:
        return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header)] + rows)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows)


def position_chart(records, n_digits):
    bars = " ▁▂▃▄▅▆▇█"
    lines = []
    for name in ladder_order(name_of(r) for r in records):
        acc = mean_pos_acc(ok_runs(records, name), n_digits)
        if acc:
            q = " ".join(f"{v:.2f}" for v in quarters(acc))
            lines.append(f"{name:<24} |{''.join(bars[round(a * 8)] for a in acc)}|  Q1..Q4 {q}")
    return "\n".join(lines)


def mean_pos_acc(runs, n_digits):
    """Accuracy by output position at one length, averaged over runs ([] if none)."""
    accs = [r["eval"][str(n_digits)]["pos_acc"] for r in runs if str(n_digits) in r["eval"]]
    return [statistics.mean(v) for v in zip(*accs)]


def report(records, args, device):
    md = [f"# Results ({args.preset} preset, budget {args.budget}, train L={args.n_digits}, "
          f"{args.max_iters} iters, seeds {args.seed}..{args.seed + args.seeds - 1})", "",
          f"torch {torch.__version__}, {hardware(device)}; wall s is training time, evaluation excluded", ""]
    for task in args.tasks:
        rs = [r for r in records if r["task"] == task]
        header, rows = table_rows(rs, args.eval_lengths)
        chart = position_chart(rs, args.n_digits)
        print(f"\n== {task}: mean±std over seeds; passes are per token per forward\n")
        print(format_table(header, rows))
        print(f"\naccuracy by output position at L={args.n_digits} (first digit left; ' '=0, █=1)\n{chart}")
        md += [f"## {task}", "", format_table(header, rows, markdown=True), "",
               f"Accuracy by output position at L={args.n_digits}:", "", "```", chart, "```", ""]
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write("\n".join(md))

# -----------------------------------------------------------------------------
# Drivers: compare (one run is a comparison of one), eval-only, plots.

def compare(args, device):
    os.makedirs(args.out_dir, exist_ok=True)
    results_path = os.path.join(args.out_dir, "results.json")
    previous = read_results(results_path)  # refuse a damaged file before any work
    runs = [(t, m, s) for t in args.tasks for m in args.models for s in range(args.seed, args.seed + args.seeds)]
    print(f"device {device}, torch {torch.__version__}, preset {args.preset}: {len(runs)} run(s)")
    print("config: " + json.dumps(run_config(args)))
    records, t0, trained = [], time.time(), 0
    for i, (task, name, seed) in enumerate(runs):
        label = f"[{i + 1}/{len(runs)}] " if len(runs) > 1 else ""
        this = run_args(args, task, name)
        done = find_finished(previous, task, name, seed, run_config(this)) if args.resume else None
        if done is not None:
            print(f"{label}{run_name(task, name, seed)} is finished in {results_path}; skipped")
            records.append(done)
            continue
        ckpt_path = os.path.join(args.out_dir, run_name(task, name, seed), "ckpt.pt")
        if args.resume and len(runs) == 1 and not os.path.exists(ckpt_path):  # a comparison starts missing runs
            raise UserError(f"--resume: no checkpoint at {ckpt_path}")
        if trained:
            eta = (time.time() - t0) / trained * (len(runs) - i)
            print(f"{label}comparison eta {fmt_time(eta)} for the {len(runs) - i} run(s) left")
        try:
            record = train_run(this, task, name, seed, device, label)
        except (UserError, Interrupted):
            raise
        except Exception as e:  # a diverged (or broken) run is recorded, the comparison goes on
            if not isinstance(e, FloatingPointError):
                import traceback
                traceback.print_exc()
            print(f"{label}run {run_name(task, name, seed)} failed: {e}", file=sys.stderr)
            record = {"model": name.split("+")[0], "name": name, "task": task, "seed": seed, "status": "failed",
                      "error": f"{type(e).__name__}: {e}", "config": run_config(this)}
        trained += 1
        append_result(results_path, record)
        records.append(record)
    report(records, args, device)
    if args.plot:
        plot(records, args)
    print(f"\nwrote {results_path} and {os.path.join(args.out_dir, 'results.md')} "
          f"({fmt_time(time.time() - t0)} in all)")
    return 1 if any(r["status"] != "ok" for r in records) else 0


def eval_only(args, device):
    for task in args.tasks:
        for name in args.models:
            for seed in range(args.seed, args.seed + args.seeds):
                path = args.ckpt or os.path.join(args.out_dir, run_name(task, name, seed), "ckpt.pt")
                ckpt = load_checkpoint(path)
                task = ckpt.get("task", task)
                config = Config(**ckpt["config"])
                check_fits(task, args.eval_lengths, config.block_size, "the checkpoint's block_size")
                model = Model(config).to(device)
                model.load_state_dict(ckpt["model"])
                print(f"{path}: {config.model} on {task}, iter {ckpt['iter']}")
                res = evaluate(model, task, args.eval_lengths, args.eval_examples, device, args.temperature, show=3)
                for n, r in res.items():
                    print(f"  L={n}: char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f} "
                          f"pos_acc {' '.join(f'{v:.2f}' for v in r['pos_acc'])}")
                if args.ckpt:
                    return 0
    return 0


def plot(records, args):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib, which is not installed: pip install matplotlib", file=sys.stderr)
        return
    for task in args.tasks:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name in ladder_order(name_of(r) for r in records):
            rs = [r for r in ok_runs(records, name) if r["task"] == task]
            if not rs:
                continue
            acc = mean_pos_acc(rs, args.n_digits)
            ax1.plot(range(1, len(acc) + 1), acc, marker="o", label=name)
            h = rs[0]["history"]
            flops = [e["iter"] / rs[0]["iters"] * rs[0]["executed_train_flops_per_token"] * rs[0]["train_tokens"]
                     for e in h]
            ax2.plot(flops, [statistics.mean(r["history"][i]["char_acc"] for r in rs) for i in range(len(h))],
                     label=name)
        ax1.set(title=f"{task}: accuracy by output position (L={args.n_digits})", xlabel="output position",
                ylabel="accuracy", ylim=(0, 1.02))
        ax2.set(title=f"{task}: char_acc vs training FLOPs", xlabel="training FLOPs (executed)",
                ylabel="char_acc", xscale="log", ylim=(0, 1.02))
        ax1.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(args.out_dir, f"{task}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")


# -----------------------------------------------------------------------------
# Benchmark: figures measured in one process, as ratios, never as a timed test.

def hardware(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu} ({torch.get_num_threads()} threads)" + (" + Apple MPS" if device == "mps" else "")


def timed(fn, device, repeats, warmup=2):
    """Median seconds of fn() over repeats, after warm-up, with the device synchronized."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(args, device, repeats=5):
    task, name = args.tasks[0], args.models[0]
    config = model_config(args, name)
    torch.manual_seed(args.seed)
    model = Model(config).to(device)
    optimizer = model.configure_optimizers(args.lr, args.weight_decay)
    g = torch.Generator(device=device).manual_seed(args.seed)
    T, B, d = tasks.seq_len(task, args.n_digits), args.batch_size, config.n_embd
    stats = model.compute_stats(T)
    print(f"bench: {name} on {task} L={args.n_digits}, batch {B}, {describe(config, stats, T)}")
    print(f"hardware: {hardware(device)}, torch {torch.__version__}, fp32")

    steps = []  # executed steps per position: halting rungs do less than the budget

    def train_step():
        idx, targets = tasks.get_batch(task, args.n_digits, B, g, device)
        _, loss = model(idx, targets)
        steps.append(model.last_steps.mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # The reference: a plain fp32 matmul of the MLP's shape, timed between the training
    # steps, so that both see the same state of the machine (its speed drifts by 10-20%).
    a = torch.randn(B * T, d, device=device)
    w = torch.randn(d, 4 * d, device=device)
    mm_flops = 2 * B * T * d * 4 * d
    model.train()
    step_times, mm_times = [], []
    for _ in range(repeats):
        step_times.append(timed(train_step, device, repeats=1, warmup=0 if step_times else 2))
        mm_times.append(timed(lambda: a @ w, device, repeats=5, warmup=1))
    step_s, mm_s = statistics.median(step_times), statistics.median(mm_times)
    executed = float(torch.stack(steps).mean())  # over the warm-up and timed steps only
    train_flops = model.compute_stats(T, steps=executed)["train_flops_per_token"] * B * T / step_s
    if args.profile:  # where a step's time goes, kernel by kernel
        with torch.profiler.profile() as prof:
            train_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    # Evaluation: greedy decoding of the same examples, batched and one at a time. Their
    # forward FLOPs are counted in the warm-up run (the steps each forward's loop ran), so
    # both paths can be set against the matmul speed: the batched path cannot beat it.
    ex = eval_set(task, args.n_digits, args.eval_examples, device)
    P, A = tasks.prompt_len(task, args.n_digits), tasks.answer_len(task, args.n_digits)
    n_single = min(10, len(ex))
    batched = lambda: model.generate(ex[:, :P], A)
    single = lambda: [model.generate(ex[i:i + 1, :P], A) for i in range(n_single)]

    def decode_flops(decode):
        spent = []
        def count(m, inputs, output):
            n, t = inputs[0].shape
            ran = float(m.last_steps.max())
            spent.append(n * t * m.compute_stats(t, steps=ran)["forward_flops_per_token"])
        handle = model.register_forward_hook(count)
        decode()
        handle.remove()
        return sum(spent)

    model.eval()
    batched_flops, single_flops = decode_flops(batched), decode_flops(single)  # also the warm-up
    batched_s = timed(batched, device, repeats=3, warmup=0)
    single_s = timed(single, device, repeats=3, warmup=0)
    out = {
        "train_step_s": step_s, "train_tokens_per_s": B * T / step_s, "train_flops_per_s": train_flops,
        "executed_block_passes": executed * config.passes_per_step,
        "matmul_flops_per_s": mm_flops / mm_s,
        "eval_batched_per_s": len(ex) / batched_s, "eval_single_per_s": n_single / single_s,
        "eval_batched_flops_per_s": batched_flops / batched_s,
        "eval_single_flops_per_s": single_flops / single_s,
        "train_step_s_range": [min(step_times), max(step_times)],
        "matmul_flops_per_s_range": [mm_flops / max(mm_times), mm_flops / min(mm_times)],
        "model": name, "task": task, "n_digits": args.n_digits, "batch_size": B, "device": device,
        "hardware": hardware(device), "torch": torch.__version__, "config": run_config(args),
    }
    mm = out["matmul_flops_per_s"]
    out["matmul_fraction"] = train_flops / mm
    out["eval_speedup"] = out["eval_batched_per_s"] / out["eval_single_per_s"]
    print(f"train: {step_s * 1e3:.1f} ms/step (median of {repeats}; {min(step_times) * 1e3:.0f}-"
          f"{max(step_times) * 1e3:.0f}) | {out['train_tokens_per_s']:,.0f} tok/s | "
          f"{out['executed_block_passes']:.1f}/{config.budget} passes executed | "
          f"{train_flops / 1e9:.1f} GFLOP/s useful")
    print(f"matmul: {mm / 1e9:.1f} GFLOP/s ({B * T}x{d} @ {d}x{4 * d}; "
          f"{out['matmul_flops_per_s_range'][0] / 1e9:.0f}-{out['matmul_flops_per_s_range'][1] / 1e9:.0f}) | "
          f"training fraction {out['matmul_fraction']:.2f}")
    print(f"eval: batched {out['eval_batched_per_s']:.1f} examples/s "
          f"({out['eval_batched_flops_per_s'] / mm:.2f} of matmul speed) vs one at a time "
          f"{out['eval_single_per_s']:.1f} examples/s ({out['eval_single_flops_per_s'] / mm:.2f}) | "
          f"speedup {out['eval_speedup']:.1f}x")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "bench.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")
    return 0


def main(argv=None):
    try:
        args = parse_args(argv)
        validate(args)
        device = get_device(args.device)
        if args.bench:
            return bench(args, device)
        if args.eval_only:
            return eval_only(args, device)
        return compare(args, device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
