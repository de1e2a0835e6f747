"""
Train one rung of the ladder on one task, top to bottom: settings; the run (learning-rate
schedule, model fresh or resumed, the loop, the record); main, which sets it up once.

    python train.py --model ar_trm --task reverse               # one run, laptop preset
    python train.py --preset paper --model ut --task addition   # one run at the paper's setting

A run lives in <out_dir>/<task>_<model>_s<seed>/: train.log, ckpt.pt and, once it has
ended, record.json. The same command again skips a finished run; --resume continues an
interrupted one exactly (each process that trains a run is one of its parts). Many runs,
or what is made of their records, are the lab's job, and such a request is handed over
unchanged (flags.hand_over): a comparison (several models, tasks or seeds, --jobs, --shard,
--plot, --flops_match, --eval_budgets) to grid.py, --report to report.py, --eval_only to
evaluate.py.
"""

import dataclasses
import math
import os
import shlex
import sys
import time
import traceback

import torch

import flags
import resume
import tasks
from artrm import Model
from machine import cpu_threads, hardware, sync
from records import UserError, by_part, code_version, describe, fmt_time, logged_to, run_name
from records import summary, write_json
from stopping import Interrupted, StopOnSignal

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
    halt_explore=(0.25, "ar_trm in training: chance a sequence must run a drawn minimum of "
                  "steps (the paper's)"),
    full_grad=(False, "extension: nested rungs backprop through every pass"),
    deep_supervision=(False, "extension: loss on y after every step (TRM)"),
    halt_loss=(False, "extension: train ar_trm's halting head (TRM)"),
    random_depth=(False, "extension: tied rungs train at a depth drawn per batch, mean N "
                  "(Huginn's)"),
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
    threads=(0, "CPU threads (0: a Slurm task's CPUs, else torch's default)"),
    compile=(False, "torch.compile the model (CUDA only)"),
    out_dir=("out", "one directory per run: record.json, train.log, ckpt.pt"),
    ckpt_interval=(0, "also checkpoint every this many iters (0: only at the end)"),
    resume=(False, "continue an interrupted run from its checkpoint (a finished run is always "
            "skipped)"),
)
DEFAULTS = {k: v for k, (v, _) in SETTINGS.items()}
PRESETS = {
    "laptop": {},  # the defaults above: whole ladder x 3 tasks in minutes on 2 CPU cores
    "paper": dict(budget=24, n_embd=384, n_head=6, dropout=0.1, block_size=180, n_digits=10,
                  eval_lengths="10,20,30,40,50", eval_examples=100, eval_interval=250,
                  max_iters=5000, batch_size=64, lr=3e-4, weight_decay=0.01, warmup_iters=0,
                  decay_lr=False, grad_clip=0.0),
}
EPILOG = ("A comparison's flags and --report: python grid.py -h; "
          "--eval_only: python evaluate.py -h")

# -----------------------------------------------------------------------------
# One run: train one rung on one task with one seed.

def train_run(args, config, device, prior, resume_with):
    """Train the run args asks for (its model: config; prior: what out_dir holds of it, a
    resume.Prior; resume_with: the command that goes on with it); return its record."""
    task, name, seed = args.task, args.model, args.seed
    T = tasks.seq_len(task, args.n_digits)
    ckpt_path = os.path.join(resume.run_dir(args), "ckpt.pt")

    def get_lr(it):  # linear warm-up, then cosine decay to lr/10 (or constant, as the paper)
        if it < args.warmup_iters:
            return args.lr * (it + 1) / args.warmup_iters
        if not args.decay_lr:
            return args.lr
        ratio = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
        return args.lr / 10 + 0.5 * (1 + math.cos(math.pi * ratio)) * (args.lr - args.lr / 10)

    torch.manual_seed(seed)  # model init and dropout
    model = Model(config).to(device)
    optimizer = model.configure_optimizers(args.lr, args.weight_decay)
    data_gen = torch.Generator(device=device).manual_seed(seed)  # the data stream, apart from init
    stats = model.compute_stats(T)
    # what this part runs on; a resume puts the earlier parts' before it (wall_s depends on them)
    state = resume.RunState(prior.settings,
                            {"code": [code_version()], "threads": [torch.get_num_threads()]})
    if prior.action == "resume":
        resume.restore(prior.ckpt, model, optimizer, data_gen, device)
        changed = resume.setting_changes(prior.ckpt["settings"], prior.settings, DEFAULTS)
        state = state.resumed_from(prior.ckpt, changed)
        new = f" with new {', '.join(changed)}" if changed else ""
        print(f"resuming {ckpt_path} from iter {state.iter}{new}")
    state.watch(model)  # a forward hook: every forward's passes go into state.passes
    it, part_it, part_wall = state.iter, state.iter, state.wall_s  # ETA: this part's pace
    fwd = torch.compile(model) if args.compile else model  # the uncompiled model is what we save
    print(f"{run_name(task, name, seed)}: {describe(config, stats, T)}, {args.max_iters} iters")

    def checkpoint():  # everything an exact resume needs, the wall time up to `it` included
        state.iter = it
        now = dataclasses.replace(state, wall_s=state.wall_s + time.time() - t_log)
        resume.save_checkpoint(ckpt_path, model, optimizer, data_gen, device, now, task=task,
                               seed=seed, n_digits=args.n_digits)

    model.train()
    t_log, tokens_log, loss = time.time(), 0, None
    with StopOnSignal(resume_with, ckpt_path) as stop:
        while it < args.max_iters and not stop.asked:
            for group in optimizer.param_groups:
                group["lr"] = get_lr(it)
            idx, targets = tasks.get_batch(task, args.n_digits, args.batch_size, data_gen, device)
            logits, loss = fwd(idx, targets)
            lossf = loss.item()
            if not math.isfinite(lossf):
                kept = "; the last good checkpoint is kept" if os.path.exists(ckpt_path) else ""
                raise FloatingPointError(f"loss is {lossf} at iter {it}{kept}")
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
                state.wall_s += dt
                mask = targets != tasks.IGNORE_INDEX
                tok_acc = (logits.argmax(-1)[mask] == targets[mask]).float().mean().item()
                ran = state.passes["train"].per_forward("position_steps") * config.passes_per_step
                pace = (state.wall_s - part_wall) / (it - part_it)  # seconds per iteration
                eta = fmt_time(pace * (args.max_iters - it))
                done = f"{it:05d}/{args.max_iters:05d} ({100 * it / args.max_iters:5.1f}%)"
                print(f"iter {done} | loss {lossf:.4f} | tok_acc {tok_acc:.3f} | "
                      f"passes {ran:.1f}/{config.budget} | "
                      f"{tokens_log / dt:,.0f} tok/s | eta {eta}")
                t_log, tokens_log = time.time(), 0
            if it % args.eval_interval == 0 or it == args.max_iters:
                sync(device)
                t_eval = time.time()
                r = tasks.evaluate(model, task, [args.n_digits], args.eval_examples, device,
                                   args.temperature)[str(args.n_digits)]
                state.history.append({"iter": it, "loss": lossf, "char_acc": r["char_acc"],
                                      "seq_acc": r["seq_acc"], "last_acc": r["pos_acc"][-1]})
                print(f"eval iter {it}: L={args.n_digits} char_acc {r['char_acc']:.3f} "
                      f"seq_acc {r['seq_acc']:.3f}")
                t_log += time.time() - t_eval  # evaluation stays out of the training clock
            if args.ckpt_interval and it % args.ckpt_interval == 0 and it < args.max_iters:
                checkpoint()
        # saves; if a signal stopped the loop, raises Interrupted (main returns 130). The final
        # evaluation stays inside the block: a signal during it stops the run at once
        stop.after_loop(checkpoint, it)
        state.passes["eval"] = resume.Tally()  # executed passes of the final evaluation only
        final = tasks.evaluate(model, task, args.eval_lengths, args.eval_examples, device,
                               args.temperature, show=3)
    print("final evaluation: " + " | ".join(
        f"L={n} char_acc {r['char_acc']:.3f} seq_acc {r['seq_acc']:.3f}" for n, r in final.items()))
    final_loss = loss.item() if loss is not None else state.history[-1]["loss"]
    return record_of(args, model, state, final, final_loss, device)


def record_of(args, model, state, final, final_loss, device):
    """What a finished run states of itself: what it trained, what it spent, what it gives.
    Of a halting rung's passes, `executed` is the mean a position ran (ACT's n_updates) and
    `spent` what its batch ran, until the last position halted: the compute paid."""
    config, train, ev = model.config, state.passes["train"], state.passes["eval"]
    T, k = tasks.seq_len(args.task, args.n_digits), config.passes_per_step
    stats = model.compute_stats(T)
    flops = lambda steps: model.compute_stats(T, steps=steps)["train_flops_per_token"]
    return {
        "model": config.model, "name": args.model, "task": args.task, "seed": args.seed,
        "budget": config.budget, "n_digits": args.n_digits, "iters": state.iter, **stats,
        "executed_block_passes_train": train.per_forward("position_steps") * k,
        "executed_block_passes_eval": ev.per_forward("position_steps") * k,
        "early_exit_fraction_train": train.per_forward("early_exits"),
        "early_exit_fraction_eval": ev.per_forward("early_exits"),
        "executed_train_flops_per_token": flops(train.per_forward("position_steps")),
        "spent_block_passes_train": known(train.per_forward("batch_steps") * k),
        "spent_block_passes_eval": ev.per_forward("batch_steps") * k,
        "spent_train_flops_per_token": known(flops(train.per_forward("batch_steps"))),
        **({"depth_drawn": train.drawn()} if config.random_depth else {}),
        "train_tokens": state.iter * args.batch_size * T,
        "wall_s": state.wall_s, "final_loss": final_loss,
        "eval": final, "history": state.history, "status": "ok", "resumed": state.resumed,
        "config": state.settings, "device": device, "hardware": hardware(device),
        "torch": torch.__version__, **by_part(state.parts),
    }


def known(x):
    """None where a resumed run's older part was not counted (JSON has no nan)."""
    return None if math.isnan(x) else x


def main(argv=None):
    """One run: its flags parsed once, its model's Config built and its device found once,
    then the one decision about its out_dir (fresh, skip, resume; or refused)."""
    try:
        args = flags.parse_args(argv, SETTINGS, PRESETS, __doc__, EPILOG, flags.LAB)
        lab = flags.lab_for(args)
        if lab:  # many runs, or what is made of them: the lab's job, with the very same flags
            return flags.hand_over(lab, args.argv)
        args.model, args.task = args.models[0], args.tasks[0]
        resume_with = shlex.join(["python", "train.py"]  # what a stop says to go on with it
                                 + flags.command_line({**args.given, "resume": True}))
        configs, device = flags.validate(args)
        config = configs[args.model]
        prior = resume.prior(args, config, DEFAULTS)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if prior.action == "skip":
        return 0
    torch.set_num_threads(args.threads or cpu_threads())  # under Slurm: its allocation
    run_dir = resume.run_dir(args)
    os.makedirs(run_dir, exist_ok=True)
    with logged_to(os.path.join(run_dir, "train.log")):
        try:
            record = train_run(args, config, device, prior, resume_with)
        except Interrupted as e:  # the run's log says so too
            print(e, file=sys.stderr)
            return 130
        except Exception as e:  # a diverged (or broken) run is recorded as failed
            if not isinstance(e, FloatingPointError):
                traceback.print_exc()
            print(f"run {run_dir} failed: {e}", file=sys.stderr)
            record = {"model": config.model, "name": args.model, "task": args.task,  # run again
                      "seed": args.seed, "status": "failed", "error": f"{type(e).__name__}: {e}",
                      "config": prior.settings}
        print(summary(record))
    write_json(os.path.join(run_dir, "record.json"), record)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
