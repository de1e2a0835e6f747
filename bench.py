"""
Speed figures for this machine, measured in one process and given as ratios (never
from a timed test): a training step against a plain matmul of the MLP's shape timed
between the steps, and batched decoding against one example at a time.

    python bench.py --model dense --task addition --preset paper
    python bench.py --model ar_trm --profile     # plus torch.profiler's table of one training step

It takes train.py's flags (the first model and task named are timed) and writes
<out_dir>/bench.json.
"""

import os
import statistics
import sys
import time

import torch

import flags
import tasks
import train
from artrm import Model
from flags import model_config
from machine import hardware, sync
from records import UserError, describe, write_json
from resume import run_config


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


def bench(args, device, profile=False, repeats=5):
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
    ops = None
    if profile:  # where a step's time goes, kernel by kernel
        with torch.profiler.profile() as prof:
            train_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        # The ops that do the work (no aten op below them): on a GPU each is a kernel launch,
        # so a small model's step costs at least ops x the launch overhead, whatever its FLOPs.
        ops = sum(e.name.startswith("aten::")
                  and not any(c.name.startswith("aten::") for c in e.cpu_children)
                  for e in prof.events())
        print(f"ops: {ops:,} aten ops per training step; "
              f"the timed step is {step_s / ops * 1e6:.1f} µs per op")

    # Evaluation: greedy decoding of the same examples, batched and one at a time. Their
    # forward FLOPs are counted in the warm-up run (the steps each forward's loop ran), so
    # both paths can be set against the matmul speed: the batched path cannot beat it.
    ex = tasks.eval_set(task, args.n_digits, args.eval_examples, device)
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
        "train_step_s": step_s, "train_tokens_per_s": B * T / step_s,
        "train_flops_per_s": train_flops,
        "executed_block_passes": executed * config.passes_per_step, "ops_per_step": ops,
        "matmul_flops_per_s": mm_flops / mm_s,
        "eval_batched_per_s": len(ex) / batched_s, "eval_single_per_s": n_single / single_s,
        "eval_batched_flops_per_s": batched_flops / batched_s,
        "eval_single_flops_per_s": single_flops / single_s,
        "train_step_s_range": [min(step_times), max(step_times)],
        "matmul_flops_per_s_range": [mm_flops / max(mm_times), mm_flops / min(mm_times)],
        "model": name, "task": task, "n_digits": args.n_digits, "batch_size": B, "device": device,
        "hardware": hardware(device), "torch": torch.__version__,
        "config": run_config(args, train.DEFAULTS),
    }
    mm = out["matmul_flops_per_s"]
    out["matmul_fraction"] = train_flops / mm
    out["eval_speedup"] = out["eval_batched_per_s"] / out["eval_single_per_s"]
    print(f"train: {step_s * 1e3:.1f} ms/step (median of {repeats}; {min(step_times) * 1e3:.0f}-"
          f"{max(step_times) * 1e3:.0f}) | {out['train_tokens_per_s']:,.0f} tok/s | "
          f"{out['executed_block_passes']:.1f}/{config.budget} passes executed | "
          f"{train_flops / 1e9:.1f} GFLOP/s useful")
    print(f"matmul: {mm / 1e9:.1f} GFLOP/s ({B * T}x{d} @ {d}x{4 * d}; "
          f"{out['matmul_flops_per_s_range'][0] / 1e9:.0f}-"
          f"{out['matmul_flops_per_s_range'][1] / 1e9:.0f}) | "
          f"training fraction {out['matmul_fraction']:.2f}")
    print(f"eval: batched {out['eval_batched_per_s']:.1f} examples/s "
          f"({out['eval_batched_flops_per_s'] / mm:.2f} of matmul speed) vs one at a time "
          f"{out['eval_single_per_s']:.1f} examples/s "
          f"({out['eval_single_flops_per_s'] / mm:.2f}) | "
          f"speedup {out['eval_speedup']:.1f}x")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "bench.json")
    write_json(path, out)
    print(f"wrote {path}")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip()
              + "\n\n--profile  also print torch.profiler's table of one training step\n"
              "Every other flag is train.py's: python train.py -h")
        return 0
    profile = "--profile" in argv
    try:
        args = flags.parse_args([a for a in argv if a != "--profile"], train.SETTINGS,
                                train.PRESETS, __doc__)
        _, device = flags.validate(args)
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or threads)  # --threads, as a run of the grid would get
        try:
            return bench(args, device, profile)
        finally:
            torch.set_num_threads(threads)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
