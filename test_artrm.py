"""Tests of the ladder's defining properties, the task data and the training driver.
CPU only, small models: the whole file runs in well under a minute."""

import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import artrm
import bench
import grid
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


def test_dropout_drops_p_in_every_lane_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = artrm.Dropout(0.1).train()(x)
    dropped = (y == 0).float().view(-1, 4).mean(0)  # one rate per 16-bit lane of each 64-bit draw
    assert torch.allclose(dropped, torch.full((4,), 0.1), atol=0.003), dropped
    assert y.mean().item() == pytest.approx(1.0, abs=0.003)  # kept values scaled by 1 / keep rate
    assert torch.allclose(y.unique(), torch.tensor([0.0, 65536 / (65536 - 6554)]))


def test_dropout_is_the_identity_and_draws_nothing_when_off():
    x = torch.randn(8, 5)
    state = torch.get_rng_state()
    assert artrm.Dropout(0.1).eval()(x) is x and artrm.Dropout(0.0).train()(x) is x
    assert torch.equal(torch.get_rng_state(), state)  # the laptop preset (p=0) consumes no randomness


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

# The parameter counts of the authors' code at the paper setting (d=384, 6 heads,
# block_size 180, vocab 14, budget 24): q, k, v without bias, lm_head with one.
PAPER_PARAMS = {"dense": 42_640_142, "iter": 1_853_966, "iter_step": 1_863_182, "ut": 1_863_567,
                "dual_ut": 1_859_727, "nested_ut": 1_856_655, "ar_trm": 1_856_655}


@pytest.mark.parametrize("rung", RUNGS)
def test_parameter_counts_are_the_authors_at_the_paper_setting(rung):
    config = Config(model=rung, budget=24, n_embd=384, n_head=6, block_size=180, vocab_size=14)
    with torch.device("meta"):
        model = Model(config)
    assert model.compute_stats()["params"] == PAPER_PARAMS[rung]
    assert model.blocks[0].attn.c_attn.bias is None and model.lm_head.bias is not None


@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("budget", [6, 12])
def test_block_passes_counted_by_hooks_match_compute_stats(rung, budget):
    model = never_halt(Model(tiny(rung, budget=budget)))
    log = PassLog(model)
    idx, targets = tasks.get_batch("reverse", 4, 2, torch.Generator().manual_seed(0))
    model.train()
    _, loss = model(idx, targets)
    reached = set()
    for i, out in enumerate(log.outputs):
        if out.requires_grad:
            out.register_hook(lambda g, i=i: reached.add(i))
    loss.backward()
    stats = model.compute_stats(idx.size(1))
    assert len(log.grad) == stats["block_passes"] == budget
    assert len(reached) == stats["grad_block_passes"]


def test_grad_pass_arithmetic_per_rung():
    want = {"dense": 24, "iter": 24, "iter_step": 24, "ut": 24, "dual_ut": 24, "nested_ut": 12, "ar_trm": 3}
    for rung, grad in want.items():
        assert Model(tiny(rung, budget=24)).compute_stats()["grad_block_passes"] == grad, rung


@pytest.mark.parametrize("rung,H,L", [("ar_trm", 2, 2), ("ar_trm", 3, 1), ("nested_ut", 2, 2), ("nested_ut", 1, 2)])
def test_truncated_gradients_reach_only_the_passes_they_should(rung, H, L):
    model = never_halt(Model(tiny(rung, budget=12, n_outer=H, n_inner=L)))
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
    # every step starts from a detached state, so the initial streams never learn
    assert model.y_init.grad is None and model.z_init.grad is None
    if rung == "ar_trm":  # final-only readout: only the last L+1 passes of the whole forward
        assert got == set(range(12 - (L + 1), 12))
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
    ar = Model(tiny("ar_trm", budget=6)).compute_stats(T)
    assert ar["train_flops_per_token"] == pytest.approx(6 * per_pass + 2 * 3 * per_pass + 3 * 2 * d * V + 3 * 2 * d / T)
    assert ar["forward_flops_per_token"] == pytest.approx(6 * per_pass + 2 * d * V + 2 * d / T)  # all 6 passes run


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
    readout = artrm.ACTReadout(model, x, 12)
    for t in range(12):
        if readout.update(x, t):
            break
    assert torch.allclose(readout.out, x, atol=1e-5)  # weights sum to 1 on a constant state
    assert ((readout.steps >= 1) & (readout.steps <= 12)).all()


def constant_halting(model, p):
    """Every position's ACT halting probability is p at every step."""
    with torch.no_grad():
        model.halt.weight.zero_()
        model.halt.bias.fill_(math.log(p / (1 - p)))
    return model


def test_act_remainder_at_the_last_step_counts_that_steps_p():
    # p = 0.3 at both of 2 steps, never reaching the threshold: the last step adds p and
    # then 1 - cum with cum = 0.6, so the remainder is 0.4 (0.7 if this step's p were left out)
    model = constant_halting(Model(tiny("ut", budget=2, ponder_weight=1.0)), 0.3)
    x = torch.randn(2, 5, 32)
    readout = artrm.ACTReadout(model, x, 2)
    assert not readout.update(x, 0) and readout.update(x, 1)
    assert torch.allclose(readout.rem, torch.full((2, 5), 0.4))
    assert readout.ponder_cost().item() == pytest.approx(2.4)
    assert torch.allclose(readout.out, x, atol=1e-6)  # weights 0.3 + (0.3 + 0.4) still sum to 1


def test_act_halts_when_the_cumulative_probability_reaches_the_threshold(monkeypatch):
    monkeypatch.setattr(artrm, "HALT_THRESHOLD", 1.0)
    model = constant_halting(Model(tiny("ut", budget=3)), 0.5).eval()  # 0.5 + 0.5 == 1.0 exactly
    model(torch.randint(0, 14, (2, 6)))
    assert (model.last_steps == 2).all()  # halts at step 2 (>=), not after the budget (>)


def test_attention_probabilities_get_dropout_in_training_only(monkeypatch):
    seen, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(artrm.F, "scaled_dot_product_attention",
                        lambda *a, dropout_p=0.0, **k: seen.append(dropout_p) or real(*a, dropout_p=dropout_p, **k))
    model = Model(Config(model="iter", budget=3, n_embd=32, n_head=2, block_size=40, dropout=0.25))
    idx = torch.randint(0, 14, (2, 6))
    model.train()
    model(idx)
    assert seen == [0.25] * 3
    model.eval()
    model(idx)
    assert seen[3:] == [0.0] * 3


def test_weight_decay_reaches_every_parameter_as_the_authors():
    model = Model(tiny("ar_trm", budget=12))
    opt = model.configure_optimizers(1e-3, weight_decay=0.01)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters()}  # biases, LayerNorm gains, y_init, z_init too


def fire_at_once(model):
    with torch.no_grad():
        model.halt.bias.fill_(30.0)
    return model


def test_ar_trm_halting_at_the_first_step_still_trains_the_block():
    model = fire_at_once(Model(tiny("ar_trm", budget=12, halt_explore=0.0))).train()
    _, loss = model(*tasks.get_batch("copy", 4, 8, torch.Generator().manual_seed(0)))
    loss.backward()
    assert (model.last_steps == 1).all()  # the whole batch halted after step 1 of 2
    grads = [p.grad for p in (*model.blocks[0].parameters(), model.wte.weight, model.step_emb.weight)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_halt_exploration_holds_each_sequence_to_its_drawn_minimum():
    model = fire_at_once(Model(tiny("ar_trm", budget=24)))  # N = 4 steps; the head wants to stop at once
    idx = torch.randint(0, 14, (256, 6))
    model.eval()
    model(idx)
    assert (model.last_steps == 1).all()  # no exploration outside training
    model.train()
    torch.manual_seed(5)
    model(idx)
    torch.manual_seed(5)  # the same draws, as HaltReadout makes them
    explore = torch.rand(256) < 0.25
    minimum = torch.where(explore, torch.randint(1, 5, (256,)), 1)
    assert torch.equal(model.last_steps[:, 0], minimum.float())
    assert 0.1 < (minimum > 1).float().mean() < 0.3  # about 0.25 * 3/4 of the sequences run longer


def test_the_pass_meter_reports_executed_passes_and_early_exits():
    model = Model(tiny("ut", budget=12)).eval()
    meter = train.PassMeter(model)
    idx = torch.randint(0, 14, (2, 10))
    with torch.no_grad():
        model.halt.weight.zero_()
        model.halt.bias.fill_(30.0)  # halts at once
    model(idx)
    assert meter.mean_steps("eval") == 1 and meter.early_fraction("eval") == 1
    meter.reset("eval")
    never_halt(model)
    model(idx)
    assert meter.mean_steps("eval") == 12 and meter.early_fraction("eval") == 0
    model.train()
    model(idx)  # training forwards are counted apart
    assert meter.state["train"][:2] == [1, 0] and meter.state["eval"][0] == 1

# -----------------------------------------------------------------------------
# Extensions for the open question (default off: the paper's behaviour)


@pytest.mark.parametrize("rung", ["nested_ut", "ar_trm"])
def test_full_grad_backprops_through_every_pass(rung):
    model = never_halt(Model(tiny(rung, budget=12, full_grad=True)))
    log = PassLog(model)
    idx, targets = tasks.get_batch("copy", 4, 2, torch.Generator().manual_seed(0))
    _, loss = model(idx, targets)
    got = set()
    for i, out in enumerate(log.outputs):
        out.register_hook(lambda g, i=i: got.add(i))
    loss.backward()
    stats = model.compute_stats(idx.size(1))
    assert got == set(range(12)) and all(log.grad) and stats["grad_block_passes"] == 12
    assert model.y_init.grad is not None and model.z_init.grad is not None
    paper = Model(tiny(rung, budget=12)).compute_stats(idx.size(1))
    assert stats["train_flops_per_token"] > paper["train_flops_per_token"]


@pytest.mark.parametrize("rung", ["nested_ut", "ar_trm"])
def test_deep_supervision_averages_one_loss_per_step(rung, monkeypatch):
    calls = []
    real = artrm.cross_entropy
    monkeypatch.setattr(artrm, "cross_entropy", lambda lo, t: calls.append(real(lo, t)) or calls[-1])
    model = never_halt(Model(tiny(rung, budget=18, deep_supervision=True)))  # 3 steps
    log = PassLog(model)
    idx, targets = tasks.get_batch("copy", 4, 2, torch.Generator().manual_seed(0))
    _, loss = model(idx, targets)
    assert len(calls) == 3 and torch.allclose(loss, torch.stack(calls).mean())
    assert sum(log.grad) == model.compute_stats()["grad_block_passes"] == 3 * 3  # last cycle of each step


def test_halt_loss_trains_the_halting_head():
    for halt_loss in (False, True):
        torch.manual_seed(0)
        model = Model(tiny("ar_trm", budget=12, halt_loss=halt_loss))
        opt = model.configure_optimizers(1e-2)
        _, loss = model(*tasks.get_batch("copy", 4, 8, torch.Generator().manual_seed(0)))
        loss.backward()
        opt.step()
        moved = model.halt.weight.abs().sum() > 0 or model.halt.bias.item() != -5.0
        assert moved == halt_loss


def test_extensions_are_refused_where_they_mean_nothing():
    with pytest.raises(ValueError, match="nested_ut and ar_trm only"):
        Config(model="dense", full_grad=True)
    with pytest.raises(ValueError, match="binary halting head"):
        Config(model="nested_ut", halt_loss=True)


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

# -----------------------------------------------------------------------------
# The training driver: results, checkpoints, resume, bad input


TINY = ["--n_embd", "16", "--n_head", "2", "--budget", "6", "--n_digits", "3", "--eval_lengths", "3,4",
        "--eval_examples", "8", "--batch_size", "8", "--block_size", "24", "--log_interval", "5",
        "--eval_interval", "5", "--device", "cpu"]


def run_main(tmp_path, *extra):
    return train.main(TINY + ["--out_dir", str(tmp_path)] + list(extra))


def cli(*args, cwd=HERE):
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def results(tmp_path):
    with open(tmp_path / "results.json") as f:
        return json.load(f)


def test_a_run_writes_its_record_and_checkpoint(tmp_path, capsys):
    assert run_main(tmp_path, "--model", "ut", "--task", "addition", "--max_iters", "6") == 0
    (rec,) = results(tmp_path)
    for key in ("model", "task", "seed", "budget", "n_digits", "iters", "params", "block_passes",
                "grad_block_passes", "train_flops_per_token", "wall_s", "final_loss", "eval",
                "executed_block_passes_train", "executed_block_passes_eval", "executed_train_flops_per_token"):
        assert key in rec, key
    assert (rec["model"], rec["task"], rec["iters"], rec["budget"]) == ("ut", "addition", 6, 6)
    assert set(rec["eval"]) == {"3", "4"} and len(rec["eval"]["4"]["pos_acc"]) == 5  # L+1 answer digits
    assert 1 <= rec["executed_block_passes_train"] <= 6 and 1 <= rec["executed_block_passes_eval"] <= 6
    assert 0 <= rec["early_exit_fraction_train"] <= 1 and 0 <= rec["early_exit_fraction_eval"] <= 1
    assert rec["executed_train_flops_per_token"] <= rec["train_flops_per_token"]
    ckpt = torch.load(tmp_path / "addition_ut_s1337" / "ckpt.pt", weights_only=True)
    assert ckpt["iter"] == 6 and Config(**ckpt["config"]).model == "ut"
    out = capsys.readouterr().out
    assert "tok/s" in out and "eta" in out and "block passes/token" in out and "passes " in out


def test_help_lists_every_knob_with_its_default(capsys):
    with pytest.raises(SystemExit):
        train.main(["-h"])
    out = capsys.readouterr().out
    for k, v in train.DEFAULTS.items():
        assert f"--{k}" in out, k
    assert out.count("(default:") >= len(train.DEFAULTS)


def test_compare_writes_one_record_per_run_and_a_table_with_every_rung(tmp_path, capsys):
    assert run_main(tmp_path, "--model", "all", "--task", "copy,addition", "--seeds", "2", "--max_iters", "2") == 0
    recs = results(tmp_path)
    keys = sorted((r["task"], r["model"], r["seed"]) for r in recs)
    assert keys == sorted((t, m, s) for t in ("copy", "addition") for m in RUNGS for s in (1337, 1338))
    out = capsys.readouterr().out
    table = out.split("== addition")[1]
    for rung in RUNGS:
        assert f"\n{rung} " in table, rung
    md = (tmp_path / "results.md").read_text()
    assert md.count("| ar_trm |") == 2 and "## copy" in md
    assert "Q1..Q4" in out and "| eta " in out


def test_a_failing_run_in_the_middle_is_recorded_and_the_rest_go_on(tmp_path, monkeypatch):
    real = train.train_run

    def flaky(args, task, rung, seed, device):
        if rung == "iter_step":
            raise FloatingPointError("loss is nan at iter 1")
        return real(args, task, rung, seed, device)

    monkeypatch.setattr(train, "train_run", flaky)
    assert run_main(tmp_path, "--model", "iter,iter_step,ut", "--task", "copy", "--max_iters", "2") == 1
    recs = results(tmp_path)
    assert [(r["model"], r["status"]) for r in recs] == [("iter", "ok"), ("iter_step", "failed"), ("ut", "ok")]
    assert "nan at iter 1" in recs[1]["error"]


def test_mean_and_std_over_seeds():
    m, s = grid.mean_std([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7) and s == pytest.approx(0.2)  # sample std (n-1)
    assert grid.mean_std([0.25]) == (0.25, 0.0)
    assert grid.pm([1.0, 0.0]) == "0.500±0.707" and grid.pm([0.25]) == "0.250"  # one seed: no spread shown
    assert grid.quarters([1, 1, 0.5, 0.5, 0, 0, 0, 1]) == [1, 0.5, 0, 0.5]


def test_nan_stops_the_run_naming_the_iteration_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    real, calls = artrm.cross_entropy, [0]

    def poisoned(logits, targets):
        calls[0] += 1
        loss = real(logits, targets)
        return loss * float("nan") if calls[0] == 8 else loss

    monkeypatch.setattr(artrm, "cross_entropy", poisoned)
    assert run_main(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "20", "--ckpt_interval", "5") == 1
    assert "loss is nan at iter 7" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "copy_iter_s1337" / "ckpt.pt", weights_only=True)
    assert ckpt["iter"] == 5  # the last good one, untouched
    assert results(tmp_path)[0]["status"] == "failed"


def test_resume_in_compare_mode_skips_finished_runs(tmp_path, capsys):
    assert run_main(tmp_path, "--model", "dense,iter", "--task", "copy", "--max_iters", "3") == 0
    capsys.readouterr()
    assert run_main(tmp_path, "--model", "dense,iter,ut", "--task", "copy", "--max_iters", "3", "--resume") == 0
    out = capsys.readouterr().out
    assert out.count("is finished in") == 2 and "copy_ut_s1337:" in out
    assert [r["model"] for r in results(tmp_path)] == ["dense", "iter", "ut"]


RESUME_FLAGS = TINY + ["--model", "ar_trm", "--task", "copy", "--max_iters", "150", "--dropout", "0.1",
                      "--ckpt_interval", "10", "--eval_interval", "100"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("once")
    assert cli(*RESUME_FLAGS, "--out_dir", str(out)).returncode == 0
    return results(out)[-1]


def assert_same_run(a, b):
    assert a["final_loss"] == b["final_loss"] and a["eval"] == b["eval"] and a["history"] == b["history"]


def test_killed_then_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, uninterrupted):
    proc = subprocess.Popen([sys.executable, "train.py", *RESUME_FLAGS, "--out_dir", str(tmp_path)], cwd=HERE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "copy_ar_trm_s1337" / "ckpt.pt"
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(ckpt, weights_only=True)["iter"] < 150, "the run ended before it could be killed"
    assert cli(*RESUME_FLAGS, "--out_dir", str(tmp_path), "--resume").returncode == 0
    assert_same_run(uninterrupted, results(tmp_path)[-1])


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path, uninterrupted):
    proc = subprocess.Popen([sys.executable, "train.py", *RESUME_FLAGS, "--out_dir", str(tmp_path)], cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("iter 00010"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    assert 10 <= torch.load(tmp_path / "copy_ar_trm_s1337" / "ckpt.pt", weights_only=True)["iter"] < 150
    assert cli(*RESUME_FLAGS, "--out_dir", str(tmp_path), "--resume").returncode == 0
    assert_same_run(uninterrupted, results(tmp_path)[-1])


def test_eval_only_evaluates_a_checkpoint_at_new_lengths(tmp_path, capsys):
    assert run_main(tmp_path, "--model", "iter_step", "--task", "reverse", "--max_iters", "3") == 0
    capsys.readouterr()
    # the checkpoint's own config wins: a different budget asked for is ignored in eval-only
    assert run_main(tmp_path, "--model", "iter_step", "--task", "reverse", "--eval_only", "--eval_lengths", "2,5",
                    "--budget", "12") == 0
    out = capsys.readouterr().out
    assert "L=2: char_acc" in out and "L=5: char_acc" in out


def test_a_mismatching_checkpoint_is_refused_naming_the_fields(tmp_path, capsys):
    assert run_main(tmp_path, "--model", "dense", "--task", "copy", "--max_iters", "2") == 0
    assert run_main(tmp_path, "--model", "dense", "--task", "copy", "--max_iters", "4", "--resume",
                    "--budget", "12", "--n_embd", "32") == 2
    err = capsys.readouterr().err
    assert "budget 6 there, 12 asked" in err and "n_embd" in err and "dropout" not in err


def test_atomic_checkpoint_write_keeps_the_old_one_when_the_writer_dies(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    train.save_checkpoint(path, {"iter": 1})

    def dies_mid_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("killed mid-save")

    monkeypatch.setattr(torch, "save", dies_mid_save)
    with pytest.raises(OSError):
        train.save_checkpoint(path, {"iter": 2})
    assert torch.load(path, weights_only=True)["iter"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # and the half-written temporary file is gone


def snapshot(path):
    """Every file under path, byte for byte (None where path does not exist)."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """An out_dir with a finished run (dense), an interrupted one (ut, checkpoint but no record),
    a corrupt checkpoint (iter), and files that are not what they claim to be."""
    lab = tmp_path_factory.mktemp("lab")
    good = lab / "good"
    assert train.main(TINY + ["--max_iters", "2", "--model", "dense,iter,ut", "--task", "copy", "--out_dir", str(good)]) == 0
    os.remove(good / "copy_ut_s1337" / "record.json")  # as if interrupted: a checkpoint without its record
    ckpt = good / "copy_iter_s1337" / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])  # truncated
    os.remove(good / "copy_iter_s1337" / "record.json")
    (lab / "garbage.pt").write_bytes(os.urandom(2000))
    torch.save({"weights": torch.zeros(3)}, lab / "foreign.pt")  # a valid torch file, not a checkpoint
    (lab / "a_file").write_text("")
    for name, content in (("numbers", "[1, 2]"), ("empties", "[{}]")):
        (lab / name).mkdir()
        (lab / name / "results.json").write_text(content)
    return lab


BAD_INPUT = {  # what stderr must say: the flags (added to a tiny dense-on-copy run into lab/good)
    "comma list of whole numbers, got '6,abc'": ["--eval_lengths", "6,abc"],
    "--eval_lengths names no length": ["--eval_lengths", ",,"],
    "--model names no model": ["--model", ""],
    "--task names no task": ["--task", ""],
    "unknown model 'gpt'": ["--model", "gpt"],
    "unknown task 'sort'": ["--task", "sort"],
    "budget 8 is impossible for nested_ut": ["--model", "all", "--budget", "8"],
    "--n_digits must be positive": ["--n_digits", "0"],
    "--eval_lengths must be positive": ["--eval_lengths", "3,-1"],
    "more than --block_size 24": ["--task", "addition", "--eval_lengths", "3,8"],
    "--lr must be positive": ["--lr=-1"],
    "multiple of n_head (5)": ["--n_embd", "64", "--n_head", "5"],
    "n_embd (0)": ["--n_embd", "0"],
    "dropout must be in [0, 1)": ["--dropout", "2"],
    "n_outer and n_inner must be at least 1": ["--model", "nested_ut", "--n_outer", "0"],
    "n_outer and n_inner must be at least 1 ": ["--model", "ar_trm", "--n_inner", "0"],
    "--temperature must be zero or positive": ["--temperature=-1"],
    "--warmup_iters must be zero or positive": ["--warmup_iters=-5"],
    "--weight_decay must be zero or positive": ["--weight_decay=-0.1"],
    "--grad_clip must be zero or positive": ["--grad_clip=-1"],
    "halt_explore must be in [0, 1]": ["--halt_explore", "1.5"],
    "--jobs must be positive": ["--jobs", "0"],
    "invalid int value": ["--max_iters", "ten"],
    "--shard takes K/N": ["--shard", "2/2"],
    "a_file is a file, not a directory": ["--out_dir", "{lab}/a_file"],
    "a_file is a file, not a directory ": ["--out_dir", "{lab}/a_file/sub"],
    "--out_dir is empty": ["--out_dir", ""],
    "numbers/results.json is not a JSON list of run records": ["--out_dir", "{lab}/numbers"],
    "empties/results.json is not a JSON list of run records": ["--out_dir", "{lab}/empties"],
    "trained with other settings (lr 0.003 there, 0.0001 asked)": ["--resume", "--lr", "0.0001"],
    "(budget 6 there, 12 asked; batch_size 8 there, 4 asked)": ["--budget", "12", "--batch_size", "4"],
    "differs in eval_lengths; add --resume": ["--eval_lengths", "3,4,5"],
    "unfinished run; add --resume": ["--model", "ut"],
    "copy_ut_s1337/ckpt.pt was trained with other settings (lr": ["--model", "ut", "--resume", "--lr", "0.01"],
    "has trained 2 iterations already, more than --max_iters 1": ["--model", "ut", "--resume", "--max_iters", "1"],
    "copy_iter_s1337/ckpt.pt is corrupt or truncated": ["--model", "ut,iter", "--resume"],  # before ut trains
    "no checkpoint at": ["--eval_only", "--ckpt", "{lab}/missing.pt"],
    "garbage.pt is corrupt or truncated": ["--eval_only", "--ckpt", "{lab}/garbage.pt"],
    "foreign.pt is a torch file but not an artrm checkpoint": ["--eval_only", "--ckpt", "{lab}/foreign.pt"],
    "no run records in": ["--report", "--out_dir", "{lab}/nothing"],
    "--eval_budgets: dense has no tied depth": ["--eval_budgets", "12"],
    "--eval_budgets 9: budget 9 is impossible for nested_ut": ["--model", "nested_ut", "--eval_budgets", "9"],
    "--step_extend is cycle or last": ["--model", "ut", "--eval_budgets", "12", "--step_extend", "first"],
}
if not torch.cuda.is_available():
    BAD_INPUT["cuda is not available"] = ["--device", "cuda"]
    BAD_INPUT["--compile is offered on CUDA only"] = ["--compile", "--device", "auto"]
if os.geteuid() != 0:  # root may write into a read-only directory
    BAD_INPUT["readonly is not writable"] = ["--out_dir", "{lab}/readonly/out"]


@pytest.mark.parametrize("want", BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(lab, want, capsys):
    (lab / "readonly").mkdir(mode=0o555, exist_ok=True)
    flags = [f.format(lab=lab) for f in BAD_INPUT[want]]
    out_dir = flags[flags.index("--out_dir") + 1] if "--out_dir" in flags else str(lab / "good")
    before = {p: snapshot(p) for p in (lab / "good", lab / "nothing", lab / "numbers", lab / "empties")}
    capsys.readouterr()
    code = train.main(TINY + ["--max_iters", "2", "--model", "dense", "--task", "copy", "--out_dir", out_dir] + flags)
    err = capsys.readouterr().err.strip()
    assert code == 2, (flags, code, err)
    assert want.strip() in err and len(err.splitlines()) == 1 and err.startswith("error: "), (flags, err)
    assert "weights_only=False" not in err  # never the advice to unpickle a file one does not trust
    assert {p: snapshot(p) for p in before} == before  # nothing trained, nothing written
    assert not os.path.exists(os.path.join(out_dir, "copy_dense_s1337")) or out_dir == str(lab / "good")


def test_the_same_command_again_skips_the_finished_run_and_keeps_one_record(tmp_path, capsys):
    flags = ["--model", "dense", "--task", "copy", "--max_iters", "2"]
    assert run_main(tmp_path, *flags) == 0
    first = snapshot(tmp_path)
    assert run_main(tmp_path, *flags) == 0
    assert "is finished in" in capsys.readouterr().out
    assert snapshot(tmp_path)["copy_dense_s1337/record.json"] == first["copy_dense_s1337/record.json"]
    assert len(results(tmp_path)) == 1
    path = tmp_path / "copy_dense_s1337" / "record.json"  # a record from before a knob existed: its default
    rec = json.loads(path.read_text())
    del rec["config"]["eval_budgets"], rec["config"]["step_extend"]
    path.write_text(json.dumps(rec))
    assert run_main(tmp_path, *flags) == 0 and "is finished in" in capsys.readouterr().out


def test_resume_may_extend_a_run_and_the_record_says_so(tmp_path):
    assert run_main(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "2") == 0
    assert run_main(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "4", "--resume") == 0
    (rec,) = results(tmp_path)
    assert rec["iters"] == 4 and rec["config"]["max_iters"] == 4
    assert rec["resumed"] == [{"iter": 2, "changed": {"max_iters": [2, 4]}}]


THREADS = torch.get_num_threads()


def test_bench_counts_the_ops_of_a_step_which_grow_with_the_passes(tmp_path, capsys):
    ops = {}  # the count the GPU estimate in the README rests on: one launch per op per pass
    for budget in ("6", "12"):
        assert bench.main(TINY + ["--out_dir", str(tmp_path), "--profile", "--model", "dense", "--task", "copy",
                                  "--budget", budget, "--threads", "1"]) == 0
        with open(tmp_path / "bench.json") as f:
            b = json.load(f)
        ops[budget] = b["ops_per_step"]
        assert "(1 threads)" in b["hardware"] and torch.get_num_threads() == THREADS  # --threads, then restored
    per_pass = (ops["12"] - ops["6"]) / 6
    assert 20 < per_pass and ops["6"] > 6 * per_pass  # forward + backward + AdamW of a block: tens of ops per pass
    capsys.readouterr()


def test_help_describes_every_knob_once(capsys):
    with pytest.raises(SystemExit):
        train.main(["-h"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: ) (default" not in out and out.count("(default:") == len(train.DEFAULTS) + 1  # + --preset
    assert "--n_head INT attention heads" in out


def test_bench_prints_its_ratios_and_writes_them(tmp_path, capsys):
    assert bench.main(TINY + ["--out_dir", str(tmp_path), "--profile", "--model", "nested_ut", "--task", "copy"]) == 0
    out = capsys.readouterr().out
    assert "fraction" in out and "speedup" in out and "hardware:" in out
    assert "aten::mm" in out and "Self CPU" in out  # --profile: the kernels of one training step
    with open(tmp_path / "bench.json") as f:
        b = json.load(f)
    for key in ("train_tokens_per_s", "train_flops_per_s", "matmul_flops_per_s", "matmul_fraction",
                "eval_batched_per_s", "eval_single_per_s", "eval_speedup", "eval_batched_flops_per_s",
                "eval_single_flops_per_s"):
        assert b[key] > 0, key
    assert b["matmul_fraction"] == pytest.approx(b["train_flops_per_s"] / b["matmul_flops_per_s"])
    assert b["eval_speedup"] == pytest.approx(b["eval_batched_per_s"] / b["eval_single_per_s"])
    assert f"ops: {b['ops_per_step']:,} aten ops per training step" in out
    # halting rungs are credited with the FLOPs they executed, not the budget's ceiling
    config = Config(**{**{k: v for k, v in vars(train.parse_args(TINY)).items()
                          if k in Config.__dataclass_fields__}, "model": "nested_ut"})
    T = tasks.seq_len("copy", 3)
    steps = b["executed_block_passes"] / config.passes_per_step
    flops = Model(config).compute_stats(T, steps=steps)["train_flops_per_token"]
    assert 0 < b["executed_block_passes"] <= 6
    assert b["train_flops_per_s"] == pytest.approx(flops * 8 * T / b["train_step_s"])


def test_variants_share_one_table_and_flops_match_sets_iters_by_construction(tmp_path, capsys):
    assert run_main(tmp_path, "--model", "ar_trm,ar_trm+full_grad", "--task", "copy", "--max_iters", "4",
                    "--flops_match", "ar_trm+full_grad") == 0
    recs = {r["name"]: r for r in results(tmp_path)}
    full, paper = recs["ar_trm+full_grad"], recs["ar_trm"]
    assert full["model"] == paper["model"] == "ar_trm" and full["iters"] == 4
    assert paper["iters"] == round(4 * full["train_flops_per_token"] / paper["train_flops_per_token"]) > 4
    assert full["grad_block_passes"] == 6 and paper["grad_block_passes"] == 3
    table = capsys.readouterr().out.split("== copy")[1]
    assert "\nar_trm " in table and "\nar_trm+full_grad " in table
    assert train.main(TINY + ["--model", "ar_trm+sparkle", "--out_dir", str(tmp_path)]) == 2


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert run_main(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "2", "--plot") == 0
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_plot_writes_position_and_learning_curves(tmp_path):
    pytest.importorskip("matplotlib")
    assert run_main(tmp_path, "--model", "iter,ut", "--task", "reverse", "--max_iters", "10", "--plot") == 0
    png = tmp_path / "reverse.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_presets_resolve_and_explicit_flags_override_them():
    paper = train.parse_args(["--preset", "paper", "--model", "all", "--task", "all"])
    train.validate(paper)  # every rung can hit budget 24; L=50 addition fits block_size 180
    assert (paper.budget, paper.n_embd, paper.n_head, paper.dropout, paper.lr, paper.max_iters) == \
        (24, 384, 6, 0.1, 3e-4, 5000)
    assert paper.eval_lengths == [10, 20, 30, 40, 50] and not paper.decay_lr and paper.temperature == 0.0
    mine = train.parse_args(["--preset", "paper", "--max_iters", "10", "--temperature", "1"])
    assert mine.max_iters == 10 and mine.temperature == 1.0 and mine.n_embd == 384
    assert train.parse_args([]).n_embd == train.DEFAULTS["n_embd"]

# -----------------------------------------------------------------------------
# The grid: jobs, shards, records that concurrent writers cannot lose, --report


def records_of(out_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in out_dir.glob("*/record.json")}


def same_records(a, b):
    """Records equal but for what depends on the machine's moment (wall time)."""
    drop = lambda r: {k: v for k, v in r.items() if k not in ("wall_s",)}
    return {k: drop(v) for k, v in a.items()} == {k: drop(v) for k, v in b.items()}


def test_shards_partition_the_run_list_exactly():
    args = train.parse_args(["--model", "all", "--task", "all", "--seeds", "3"])
    runs = grid.plan(args)
    assert len(runs) == 63 and len(set(runs)) == 63
    for n in (1, 2, 5, 8, 63, 100):
        parts = [grid.shard(runs, k, n) for k in range(n)]
        assert sorted(r for p in parts for r in p) == sorted(runs)  # every run in exactly one shard
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert train.parse_args(["--shard", "3/8"]).shard_k == 3
    for bad in ("8/8", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(train.UserError, match="--shard takes K/N"):
            train.parse_args([f"--shard={bad}"])


def test_concurrent_processes_into_one_out_dir_lose_no_record(tmp_path):
    runs = [("copy", "dense"), ("copy", "iter"), ("reverse", "dense"), ("reverse", "iter")]
    for seed in (1, 2):  # two rounds: the second one writes beside the first one's records
        procs = [subprocess.Popen([sys.executable, "train.py", *TINY, "--max_iters", "2", "--eval_lengths", "3",
                                   "--model", model, "--task", task, "--seed", str(seed), "--out_dir", str(tmp_path)],
                                  cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for task, model in runs]
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errs
    recs = records_of(tmp_path)
    assert sorted(recs) == sorted(f"{t}_{m}_s{s}" for t, m in runs for s in (1, 2))
    for path in tmp_path.rglob("*"):  # every file whole: no temporary left, every JSON readable
        assert not path.name.endswith(".tmp"), path
        if path.suffix == ".json":
            json.loads(path.read_text())
    assert len(results(tmp_path)) <= 8  # a view: each writer saw the records there when it wrote
    assert train.main(["--report", "--out_dir", str(tmp_path)]) == 0
    assert len(results(tmp_path)) == 8  # --report rebuilds it from every record


def test_jobs_2_gives_the_records_of_jobs_1(tmp_path, capsys):
    flags = ["--model", "iter,ut", "--task", "copy", "--max_iters", "4", "--threads", "1"]
    assert run_main(tmp_path / "one", *flags) == 0
    capsys.readouterr()
    assert run_main(tmp_path / "two", *flags, "--jobs", "2") == 0
    out = capsys.readouterr().out
    assert out.count("start copy_") == 2 and "eta" in out and "char_acc" in out  # a line per start and finish
    one, two = records_of(tmp_path / "one"), records_of(tmp_path / "two")
    assert sorted(one) == ["copy_iter_s1337", "copy_ut_s1337"] and same_records(one, two)
    log = (tmp_path / "two" / "copy_ut_s1337" / "train.log").read_text()
    assert "iter 00004/00004" in log and "eval iter 4" in log  # each run's full log in its directory


def test_report_over_two_shards_is_the_table_of_one_go_and_names_what_is_missing(tmp_path, capsys):
    flags = ["--model", "dense,ut", "--task", "copy,reverse", "--max_iters", "3"]
    assert run_main(tmp_path / "once", *flags) == 0
    for k in (0, 1):
        assert run_main(tmp_path / "shards", *flags, "--shard", f"{k}/2") == 0
    assert same_records(records_of(tmp_path / "once"), records_of(tmp_path / "shards"))
    capsys.readouterr()
    assert train.main(["--report", "--out_dir", str(tmp_path / "shards")]) == 0
    shards = capsys.readouterr().out
    assert train.main(["--report", "--out_dir", str(tmp_path / "once")]) == 0
    once = capsys.readouterr().out
    cols = lambda line: re.split(r"\s{2,}", line.strip())
    no_wall = lambda text: [c[:6] + c[7:] for c in map(cols, text.splitlines()) if len(c) == 12]  # c[6]: wall s
    assert no_wall(shards) == no_wall(once) and len(no_wall(once)) == 2 + 4  # two headers, four rows
    assert (tmp_path / "shards" / "results.md").read_text().count("| ut ") == 2
    # a grid given to --report: its missing run is named with the command that runs it
    assert train.main(TINY + ["--report", "--out_dir", str(tmp_path / "shards"), *flags, "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 of 8 run(s) of this grid are missing" in out
    cmd = next(line for line in out.splitlines() if "missing:" in line and "--model ut --task reverse --seed 1338" in line)
    assert "--report" not in cmd and "--max_iters 3" in cmd and "--n_embd 16" in cmd


# -----------------------------------------------------------------------------
# Thinking longer or shorter at test time (--eval_budgets)


def test_a_tied_rung_past_its_trained_steps_cycles_its_step_embeddings():
    torch.manual_seed(0)
    model = Model(tiny("iter_step", budget=3)).eval()  # N = 3 trained steps
    idx = torch.randint(0, 14, (2, 7))
    x = model.wte(idx) + model.wpe(torch.arange(7))
    for extend, order in (("cycle", [0, 1, 2, 0, 1, 2, 0]), ("last", [0, 1, 2, 2, 2, 2, 2])):
        h = x
        for t in order:
            h = model.blocks[0](h + model.step_emb.weight[t])
        logits, _ = model(idx, n_steps=7, extend=extend)
        assert torch.allclose(logits, model.lm_head(model.ln_f(h)), atol=1e-6), extend
    with pytest.raises(ValueError, match="dense has no tied depth"):
        Model(tiny("dense", budget=3))(idx, n_steps=6)


@pytest.mark.parametrize("rung", ["iter", "ut", "ar_trm"])
def test_its_own_budget_gives_the_normal_evaluation_and_more_budget_runs_more_passes(rung):
    torch.manual_seed(0)
    model = never_halt(Model(tiny(rung, budget=6)))
    normal = train.evaluate(model, "copy", [3], 16, "cpu")
    same = train.evaluate(model, "copy", [3], 16, "cpu", n_steps=model.config.n_steps)
    assert same == normal
    longer = train.evaluate(model, "copy", [3], 16, "cpu", n_steps=2 * model.config.n_steps)
    assert longer["3"]["passes"] == 2 * normal["3"]["passes"] == 12


def test_eval_budgets_are_recorded_beside_the_run_and_reported(tmp_path, capsys):
    assert run_main(tmp_path, "--model", "iter,ut", "--task", "copy", "--max_iters", "2", "--eval_budgets", "3,6,12",
                    "--eval_lengths", "3") == 0
    e = json.loads((tmp_path / "copy_ut_s1337" / "test_budgets.json").read_text())
    assert (e["train_budget"], e["extend"], e["seed"], sorted(e["budgets"])) == (6, "cycle", 1337, ["12", "3", "6"])
    assert e["budgets"]["6"]["3"]["char_acc"] == results(tmp_path)[1]["eval"]["3"]["char_acc"]  # ut's own budget
    capsys.readouterr()
    assert train.main(["--report", "--out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "thinking longer or shorter" in out and "budget 12" in out and "\nut (cycle)" in out
    # and on a saved checkpoint, with the other way of extending the step embeddings
    assert run_main(tmp_path, "--eval_only", "--model", "iter", "--task", "copy", "--eval_budgets", "24",
                    "--step_extend", "last") == 0
    e = json.loads((tmp_path / "copy_iter_s1337" / "test_budgets.json").read_text())
    assert e["extend"] == "last" and list(e["budgets"]) == ["24"] and e["budgets"]["24"]["3"]["passes"] == 24


def test_report_over_an_experiment_of_several_grids_keeps_their_rows_apart(tmp_path, capsys):
    for budget in ("6", "12"):  # one grid per budget, each in a folder of the experiment
        assert run_main(tmp_path / f"b{budget}", "--model", "iter", "--task", "copy", "--max_iters", "2",
                        "--budget", budget) == 0
    capsys.readouterr()
    assert train.main(["--report", "--out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\niter budget=6 " in out and "\niter budget=12 " in out
    assert len(results(tmp_path)) == 2
    records = grid.read_records(str(tmp_path))  # sweep.png's data: folders in order, what each changes
    folders, acc = grid.sweep(records)
    assert folders == [("b6", ""), ("b12", "budget=12")]
    assert acc == {"copy": {"iter": [[records[os.path.join(b, "copy_iter_s1337")]["eval"]["3"]["char_acc"]]
                                     for b in ("b6", "b12")]}}
    if importlib.util.find_spec("matplotlib"):
        assert train.main(["--report", "--plot", "--out_dir", str(tmp_path)]) == 0
        assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


# -----------------------------------------------------------------------------
# The committed records and the README cannot drift apart


def readme_row(heading, first_cell):
    """The cells of the README table row that starts with first_cell, in the section under heading."""
    text = open(os.path.join(HERE, "README.md")).read().split(heading, 1)[1]
    line = next(l for l in text.splitlines() if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_readme_laptop_table_is_what_the_committed_records_say(tmp_path, capsys):
    out_dir = str(tmp_path / "laptop")  # a copy: the test writes the views, never into the repository
    shutil.copytree(os.path.join(HERE, "results", "laptop"), out_dir, ignore=shutil.ignore_patterns("ckpt.pt"))
    assert train.main(["--report", "--out_dir", out_dir]) == 0  # the report over the records runs...
    assert open(os.path.join(out_dir, "results.md")).read() == \
        open(os.path.join(HERE, "results", "laptop", "results.md")).read()  # and rebuilds the committed view
    capsys.readouterr()
    records = grid.read_records(out_dir)
    assert len(records) == 63 and all(r["status"] == "ok" for r in records.values())
    for rung in RUNGS:  # ... and gives the README's numbers
        row = readme_row("## Results: the laptop reproduction", rung)
        for task, cell in (("copy", 1), ("reverse", 3), ("addition", 5)):
            runs = [r for r in records.values() if r["task"] == task and r["name"] == rung]
            assert row[cell] == grid.pm(r["eval"]["6"]["char_acc"] for r in runs), (rung, task)
    budgets = {(e["name"], b): [x["budgets"][b]["6"]["char_acc"] for x in grid.read_test_budgets(out_dir)
                                if x["name"] == e["name"]]
               for e in grid.read_test_budgets(out_dir) for b in e["budgets"]}
    row = readme_row("### Thinking longer at test time", "ut")
    assert row[3].startswith(grid.pm(budgets[("ut", "12")]))


def test_ctrl_c_in_the_final_evaluation_is_one_line_and_the_checkpoint_stays(tmp_path, monkeypatch, capsys):
    real = train.evaluate

    def interrupted_at_the_end(model, task, lengths, *a, **k):
        if lengths == [3, 4]:  # the final evaluation (training evaluates at L=3 only)
            raise KeyboardInterrupt
        return real(model, task, lengths, *a, **k)

    monkeypatch.setattr(train, "evaluate", interrupted_at_the_end)
    assert run_main(tmp_path, "--model", "iter", "--task", "copy", "--max_iters", "5") == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "final evaluation" in err and "--resume" in err
    assert torch.load(tmp_path / "copy_iter_s1337" / "ckpt.pt", weights_only=True)["iter"] == 5
    assert not (tmp_path / "copy_iter_s1337" / "record.json").exists()


@pytest.mark.parametrize("folder,heading", [("open_question", "**Same budget and iterations**"),
                                            ("open_question_flops", "**Matched training FLOPs**")])
def test_the_readme_open_question_tables_are_what_the_committed_records_say(folder, heading):
    records = list(grid.read_records(os.path.join(HERE, "results", folder)).values())
    names = sorted({r["name"] for r in records})
    assert len(records) == 9 * len(names) and len(names) >= 8
    for name in names:
        row = readme_row(heading, name)
        for task, cell in (("copy", 3), ("reverse", 4), ("addition", 5)):
            runs = [r for r in records if r["task"] == task and r["name"] == name]
            assert row[cell] == grid.pm(r["eval"]["6"]["char_acc"] for r in runs), (folder, name, task)


TOWARD_PAPER = "### From the laptop toward the paper's setting"


def test_the_readme_steps_toward_the_paper_are_what_the_committed_records_say():
    out_dir = os.path.join(HERE, "results", "toward_paper")
    records = grid.read_records(out_dir)
    folders, acc = grid.sweep(records)
    assert [f for f, _ in folders][:2] == ["step0_laptop", "step1_budget24"] and folders[1][1] == "budget=24"
    for name, per_folder in acc["addition"].items():  # the README's table is the records' numbers
        row = readme_row(TOWARD_PAPER, name)
        assert row[1:1 + len(folders)] == [grid.pm(a) for a in per_folder], name
    # ... and its commands are the ones they ran: each recorded run would be skipped as finished
    block = open(os.path.join(HERE, "README.md")).read().split(TOWARD_PAPER)[1].split("```bash\n")[1].split("```")[0]
    echo = subprocess.run(["bash", "-c", 'python() { printf "%s\\n" "$*"; }\n' + block],
                          capture_output=True, text=True, check=True).stdout
    covered = set()
    for line in echo.splitlines():
        args = train.parse_args(shlex.split(line)[1:])
        if args.report:
            continue
        train.validate(args)
        args.out_dir = os.path.join(HERE, args.out_dir)
        for run in grid.plan(args):
            path = os.path.relpath(os.path.join(args.out_dir, train.run_name(*run)), out_dir)
            if path in records:
                assert grid.finished(args, run, {train.run_name(*run): records[path]}), path
                covered.add(path)
    assert covered == set(records)
