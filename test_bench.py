"""Tests of bench.py: speed as ratios measured in one process, the ops of a training step, and
the FLOPs a halting rung executed."""

import json

import pytest
import torch

import bench
import tasks
from artrm import Config, Model
from test_train import TINY, parse

THREADS = torch.get_num_threads()


def test_bench_counts_the_ops_of_a_step_which_grow_with_the_passes(tmp_path, capsys):
    ops = {}  # the count the GPU estimate rests on: one launch per op per pass
    for budget in ("6", "12"):
        assert bench.main(TINY + ["--out_dir", str(tmp_path), "--profile", "--model", "dense",
                                  "--task", "copy", "--budget", budget, "--threads", "1"]) == 0
        with open(tmp_path / "bench.json") as f:
            b = json.load(f)
        ops[budget] = b["ops_per_step"]
        assert "(1 threads)" in b["hardware"]
        assert torch.get_num_threads() == THREADS  # --threads, then restored
    per_pass = (ops["12"] - ops["6"]) / 6
    # forward + backward + AdamW of a block: tens of ops per pass
    assert 20 < per_pass and ops["6"] > 6 * per_pass
    capsys.readouterr()


def test_bench_prints_its_ratios_and_writes_them(tmp_path, capsys):
    assert bench.main(TINY + ["--out_dir", str(tmp_path), "--profile", "--model", "nested_ut",
                              "--task", "copy"]) == 0
    out = capsys.readouterr().out
    assert "fraction" in out and "speedup" in out and "hardware:" in out
    assert "aten::mm" in out and "Self CPU" in out  # --profile: the kernels of one training step
    with open(tmp_path / "bench.json") as f:
        b = json.load(f)
    for key in ("train_tokens_per_s", "train_flops_per_s", "matmul_flops_per_s", "matmul_fraction",
                "eval_batched_per_s", "eval_single_per_s", "eval_speedup",
                "eval_batched_flops_per_s", "eval_single_flops_per_s"):
        assert b[key] > 0, key
    assert b["matmul_fraction"] == pytest.approx(b["train_flops_per_s"] / b["matmul_flops_per_s"])
    assert b["eval_speedup"] == pytest.approx(b["eval_batched_per_s"] / b["eval_single_per_s"])
    assert f"ops: {b['ops_per_step']:,} aten ops per training step" in out
    # halting rungs are credited with the FLOPs they executed, not the budget's ceiling
    config = Config(**{**{k: v for k, v in vars(parse(TINY)).items()
                          if k in Config.__dataclass_fields__}, "model": "nested_ut"})
    T = tasks.seq_len("copy", 3)
    steps = b["executed_block_passes"] / config.passes_per_step
    flops = Model(config).compute_stats(T, steps=steps)["train_flops_per_token"]
    assert 0 < b["executed_block_passes"] <= 6
    assert b["train_flops_per_s"] == pytest.approx(flops * 8 * T / b["train_step_s"])
