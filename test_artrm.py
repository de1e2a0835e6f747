"""Tests of the ladder's defining properties, the task data and the training driver.
CPU only, small models: the whole file runs in well under a minute."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import artrm
import tasks
import train
from artrm import RUNGS, Block, Config, Model

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny(model, budget=6, **kw):
    return Config(model=model, budget=budget, n_embd=32, n_head=2, block_size=40, dropout=0.0, **kw)


def never_halt(model):
    """Force full compute on the halting rungs (ACT p ~ 0; binary logit << 0)."""
    if hasattr(model, "halt"):
        with torch.no_grad():
            model.halt.weight.zero_()
            model.halt.bias.fill_(-30.0)
    return model


class PassLog:
    """Records every Block call of a model: whether grad was on, and its output."""

    def __init__(self, model):
        self.grad, self.outputs = [], []
        for m in model.modules():
            if isinstance(m, Block):
                m.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.grad.append(torch.is_grad_enabled())
        self.outputs.append(output)

# -----------------------------------------------------------------------------
# The ladder


@pytest.mark.parametrize("rung", RUNGS)
def test_every_rung_is_causal(rung):
    torch.manual_seed(0)
    model = Model(tiny(rung)).eval()
    idx = torch.randint(0, 14, (3, 16))
    for t in (0, 7, 14):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1 + torch.arange(3)) % 14
        a, _ = model(idx)
        b, _ = model(changed)
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6), f"{rung}: logits <= {t} saw token {t + 1}"
        assert not torch.allclose(a[:, t + 1], b[:, t + 1]), f"{rung}: token {t + 1} had no effect at all"


@pytest.mark.parametrize("rung", RUNGS[1:])
def test_shared_block_rungs_have_one_block_whatever_the_budget(rung):
    small, big = Model(tiny(rung, budget=6)), Model(tiny(rung, budget=24))
    assert len(small.blocks) == len(big.blocks) == 1
    block = sum(p.numel() for p in small.blocks[0].parameters())
    extra = 18 * 32 if rung not in ("iter", "dense") else 0  # only the step embeddings grow
    if rung == "dual_ut":
        extra = 9 * 32
    elif rung in ("nested_ut", "ar_trm"):
        extra = 3 * 32
    assert big.compute_stats()["params"] - small.compute_stats()["params"] == extra
    assert sum(p.numel() for p in big.blocks.parameters()) == block


def test_dense_has_one_block_per_pass_and_matches_the_paper_size():
    assert len(Model(tiny("dense", budget=6)).blocks) == 6
    # ladder.md: at B=24, d=384 dense has 42.6M parameters, the others about 1.86M
    assert round(Model(Config(model="dense")).compute_stats()["params"] / 1e6, 1) == 42.7
    assert round(Model(Config(model="ut")).compute_stats()["params"] / 1e6, 2) == 1.86


@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("budget", [6, 12])
def test_block_passes_counted_by_hooks_match_compute_stats(rung, budget):
    model = never_halt(Model(tiny(rung, budget=budget)))
    log = PassLog(model)
    idx, targets = tasks.get_batch("reverse", 4, 2, torch.Generator().manual_seed(0))
    model.train()
    model(idx, targets)
    stats = model.compute_stats(idx.size(1))
    assert len(log.grad) == stats["block_passes"] == budget
    assert sum(log.grad) == stats["grad_block_passes"]


def test_grad_pass_arithmetic_per_rung():
    want = {"dense": 24, "iter": 24, "iter_step": 24, "ut": 24, "dual_ut": 24, "nested_ut": 12, "ar_trm": 3}
    for rung, grad in want.items():
        assert Model(tiny(rung, budget=24)).compute_stats()["grad_block_passes"] == grad, rung


@pytest.mark.parametrize("rung,H,L", [("ar_trm", 2, 2), ("ar_trm", 3, 1), ("nested_ut", 2, 2)])
def test_truncated_gradients_reach_only_the_passes_they_should(rung, H, L):
    model = never_halt(Model(tiny(rung, budget=12 if (H, L) == (2, 2) else 12, n_outer=H, n_inner=L)))
    log = PassLog(model)
    idx, targets = tasks.get_batch("copy", 4, 2, torch.Generator().manual_seed(0))
    _, loss = model(idx, targets)
    got = set()
    for i, out in enumerate(log.outputs):
        if out.requires_grad:
            out.register_hook(lambda g, i=i: got.add(i) if g.abs().sum() > 0 else None)
    loss.backward()
    per_step = H * (L + 1)
    last_cycle = set()
    for step in range(12 // per_step):
        last_cycle |= set(range(step * per_step + per_step - (L + 1), (step + 1) * per_step))
    if rung == "ar_trm":  # final-only readout: only the last L+1 passes of the whole forward
        assert got == set(range(12 - (L + 1), 12))
        assert model.y_init.grad is None and model.z_init.grad is None
    else:  # ACT readout reads every step, but each step's first H-1 cycles are no_grad
        assert got == last_cycle


def test_ar_trm_halting_head_never_fires_and_gets_no_gradient():
    model = Model(tiny("ar_trm", budget=12))
    assert model.halt.weight.abs().sum() == 0 and model.halt.bias.item() == -5.0
    idx, targets = tasks.get_batch("copy", 4, 8, torch.Generator().manual_seed(0))
    _, loss = model(idx, targets)
    loss.backward()
    assert model.halt.weight.grad is None  # no loss reaches it: it stays at -5 forever
    assert (model.last_steps == model.config.n_steps).all()


@pytest.mark.parametrize("rung,budget,ok", [("nested_ut", 8, "6, 12, 18, 24"), ("dual_ut", 7, "2, 4, 6, 8"),
                                            ("ar_trm", 0, "6, 12, 18, 24")])
def test_impossible_budgets_raise_and_name_the_ones_that_work(rung, budget, ok):
    with pytest.raises(ValueError, match=ok):
        Config(model=rung, budget=budget)


def test_budget_resolves_depth_as_the_paper():
    depth = {r: Config(model=r, budget=24).n_steps for r in RUNGS}
    assert depth == {"dense": 24, "iter": 24, "iter_step": 24, "ut": 24, "dual_ut": 12, "nested_ut": 4,
                     "ar_trm": 4}


def test_unknown_rung_raises():
    with pytest.raises(ValueError, match="unknown model"):
        Config(model="gpt5")


def test_training_flops_count_backward_only_where_gradient_flows():
    T, d, V = 13, 32, 14
    per_pass = 24 * d * d + 4 * d * (T + 1) / 2
    dense = Model(tiny("dense", budget=6)).compute_stats(T)["train_flops_per_token"]
    assert dense == pytest.approx(3 * (6 * per_pass + 2 * d * V))
    ar = Model(tiny("ar_trm", budget=6)).compute_stats(T)["train_flops_per_token"]
    assert ar == pytest.approx(6 * per_pass + 2 * 3 * per_pass + 3 * 2 * d * V + 3 * 2 * d / T)


def test_act_halts_at_once_or_never_and_reports_executed_steps():
    model = Model(tiny("ut", budget=12)).eval()
    idx = torch.randint(0, 14, (2, 10))
    with torch.no_grad():
        model.halt.weight.zero_()
        model.halt.bias.fill_(30.0)  # p = 1: every position halts after one step
    log = PassLog(model)
    model(idx)
    assert (model.last_steps == 1).all() and len(log.grad) == 1
    never_halt(model)
    model(idx)
    assert (model.last_steps == 12).all() and len(log.grad) == 1 + 12


def test_act_weights_sum_to_one():
    torch.manual_seed(0)
    model = Model(tiny("ut", budget=12)).eval()
    x = torch.randn(2, 5, 32)
    readout = artrm.ACTReadout(model, x)
    for t in range(12):
        if readout.update(x, t == 11):
            break
    assert torch.allclose(readout.out, x, atol=1e-5)  # weights sum to 1 on a constant state
    assert ((readout.steps >= 1) & (readout.steps <= 12)).all()


def test_tiny_run_on_reverse_drives_the_loss_down():
    torch.manual_seed(0)
    model = Model(tiny("dense", budget=2))
    opt = model.configure_optimizers(3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        _, loss = model(*tasks.get_batch("reverse", 3, 32, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[:5]) / 5 > 2.0
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5

# -----------------------------------------------------------------------------
# Tasks


def test_task_text_is_the_paper_format_and_addition_is_right():
    g = torch.Generator().manual_seed(1)
    for L in (1, 4, 10, 50):
        for row in tasks.make_examples("copy", L, 20, g):
            s = tasks.decode(row)
            assert s == s[:L] + "|" + s[:L] + "\n" and s[:L].isdigit()
        for row in tasks.make_examples("reverse", L, 20, g):
            s = tasks.decode(row)
            assert s == s[:L] + "|" + s[:L][::-1] + "\n"
        for row in tasks.make_examples("addition", L, 20, g):
            s = tasks.decode(row)
            a, rest = s.split("+")
            b, c = rest.split("=")
            assert len(a) == len(b) == L and len(c) == L + 2 and c.endswith("\n")
            assert int(a) + int(b) == int(c) and c[:-1] == str(int(a) + int(b)).zfill(L + 1)
    assert tasks.decode(tasks.encode("0451+9872=10323\n")) == "0451+9872=10323\n"
    assert tasks.VOCAB == "0123456789|+=\n" and len(tasks.VOCAB) == 14


def test_addition_carries_across_every_digit():
    a = torch.tensor([[9, 9, 9, 9], [0, 4, 5, 1]])
    b = torch.tensor([[0, 0, 0, 1], [9, 8, 7, 2]])
    assert tasks.add_digits(a, b).tolist() == [[1, 0, 0, 0, 0], [1, 0, 3, 2, 3]]


@pytest.mark.parametrize("task", tasks.TASKS)
def test_targets_mask_exactly_the_prompt(task):
    L = 5
    idx, targets = tasks.get_batch(task, L, 4, torch.Generator().manual_seed(0))
    assert idx.shape == targets.shape == (4, tasks.seq_len(task, L))  # as long as the task needs
    keep = targets != artrm.IGNORE_INDEX
    n_answer = tasks.answer_len(task, L) + 1  # answer digits and the closing newline
    assert (keep.sum(1) == n_answer).all() and keep[:, -n_answer:].all()
    assert (targets[:, -1] == tasks.EOS).all()
    assert torch.equal(targets[:, :-1][keep[:, :-1]], idx[:, 1:][keep[:, :-1]])


def test_same_seed_gives_the_same_batch_whatever_the_model():
    batches = []
    for rung in ("dense", "ar_trm"):
        torch.manual_seed(123)
        Model(tiny(rung))  # initialisation draws from the global RNG, not the data stream
        batches.append(tasks.get_batch("addition", 6, 8, torch.Generator().manual_seed(7)))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    other = tasks.get_batch("addition", 6, 8, torch.Generator().manual_seed(8))
    assert not torch.equal(batches[0][0], other[0])
