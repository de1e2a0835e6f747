"""Tests of the ladder's defining properties and the task data: the model, CPU only, small.
The run is tested in test_train.py; the lab in a file per part (test_grid.py, test_evaluate.py,
test_report.py, test_bench.py, test_sample.py); the README against the records in test_notes.py."""

import collections
import math
import os

import pytest
import torch
import torch.nn.functional as F

import artrm
import tasks
from artrm import Block, Config, Model
from resume import RunState, Tally

# Per-rung and per-task tests iterate artrm.LADDER and tasks.TASKS, so that a fork's new row
# or task is tested the moment it exists; PAPER_RUNGS names the seven where a test checks
# the paper's own numbers.
PAPER_RUNGS = ("dense", "iter", "iter_step", "ut", "dual_ut", "nested_ut", "ar_trm")

NESTED = [r for r, row in artrm.LADDER.items() if row.nested]  # where the extensions apply
TIED = [r for r, row in artrm.LADDER.items() if row.tied]  # one shared block; random_depth
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
    # the laptop preset (p=0) consumes no randomness
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("rung", artrm.LADDER)
def test_every_rung_is_causal(rung):
    torch.manual_seed(0)
    model = Model(tiny(rung)).eval()
    idx = torch.randint(0, 14, (3, 16))
    for t in (0, 7, 14):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1 + torch.arange(3)) % 14
        a, _ = model(idx)
        b, _ = model(changed)
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6), \
            f"{rung}: logits <= {t} saw token {t + 1}"
        assert not torch.allclose(a[:, t + 1], b[:, t + 1]), \
            f"{rung}: token {t + 1} had no effect at all"


@pytest.mark.parametrize("rung", TIED)
def test_shared_block_rungs_have_one_block_whatever_the_budget(rung):
    small, big = Model(tiny(rung, budget=6)), Model(tiny(rung, budget=24))
    assert len(small.blocks) == len(big.blocks) == 1
    block = sum(p.numel() for p in small.blocks[0].parameters())
    more_steps = big.config.n_steps - small.config.n_steps
    extra = more_steps * 32 if artrm.LADDER[rung].step_emb else 0  # only the step embeddings grow
    assert big.compute_stats()["params"] - small.compute_stats()["params"] == extra
    assert sum(p.numel() for p in big.blocks.parameters()) == block


def test_dense_has_one_block_per_pass_and_matches_the_paper_size():
    assert len(Model(tiny("dense", budget=6)).blocks) == 6

# The parameter counts of the authors' code at the paper setting (d=384, 6 heads,
# block_size 180, vocab 14, budget 24): q, k, v without bias, lm_head with one.
PAPER_PARAMS = {"dense": 42_640_142, "iter": 1_853_966, "iter_step": 1_863_182, "ut": 1_863_567,
                "dual_ut": 1_859_727, "nested_ut": 1_856_655, "ar_trm": 1_856_655}


@pytest.mark.parametrize("rung", PAPER_PARAMS)
def test_parameter_counts_are_the_authors_at_the_paper_setting(rung):
    config = Config(model=rung, budget=24, n_embd=384, n_head=6, block_size=180, vocab_size=14)
    with torch.device("meta"):
        model = Model(config)
    assert model.compute_stats()["params"] == PAPER_PARAMS[rung]
    assert model.blocks[0].attn.c_attn.bias is None and model.lm_head.bias is not None


@pytest.mark.parametrize("rung", artrm.LADDER)
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
    want = {"dense": 24, "iter": 24, "iter_step": 24, "ut": 24, "dual_ut": 24, "nested_ut": 12,
            "ar_trm": 3}
    for rung, grad in want.items():
        assert Model(tiny(rung, budget=24)).compute_stats()["grad_block_passes"] == grad, rung


@pytest.mark.parametrize("rung,H,L", [("ar_trm", 2, 2), ("ar_trm", 3, 1), ("nested_ut", 2, 2),
                                      ("nested_ut", 1, 2)])
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


@pytest.mark.parametrize("rung,budget,ok", [("nested_ut", 8, "6, 12, 18, 24"),
                                            ("dual_ut", 7, "2, 4, 6, 8"),
                                            ("ar_trm", 0, "6, 12, 18, 24")])
def test_impossible_budgets_raise_and_name_the_ones_that_work(rung, budget, ok):
    with pytest.raises(ValueError, match=ok):
        Config(model=rung, budget=budget)


def test_budget_resolves_depth_as_the_paper():
    depth = {r: Config(model=r, budget=24).n_steps for r in PAPER_RUNGS}
    assert depth == {"dense": 24, "iter": 24, "iter_step": 24, "ut": 24, "dual_ut": 12,
                     "nested_ut": 4, "ar_trm": 4}


def test_unknown_rung_raises():
    with pytest.raises(ValueError, match="unknown model"):
        Config(model="gpt5")


def test_training_flops_count_backward_only_where_gradient_flows():
    T, d, V = 13, 32, 14
    per_pass = 24 * d * d + 4 * d * (T + 1) / 2
    dense = Model(tiny("dense", budget=6)).compute_stats(T)["train_flops_per_token"]
    assert dense == pytest.approx(3 * (6 * per_pass + 2 * d * V))
    ar = Model(tiny("ar_trm", budget=6)).compute_stats(T)
    assert ar["train_flops_per_token"] == \
        pytest.approx(6 * per_pass + 2 * 3 * per_pass + 3 * 2 * d * V + 3 * 2 * d / T)
    # all 6 passes run
    assert ar["forward_flops_per_token"] == pytest.approx(6 * per_pass + 2 * d * V + 2 * d / T)


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

    def recorded(*a, dropout_p=0.0, **k):
        seen.append(dropout_p)
        return real(*a, dropout_p=dropout_p, **k)

    monkeypatch.setattr(artrm.F, "scaled_dot_product_attention", recorded)
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
    # biases, LayerNorm gains, y_init, z_init too
    assert decayed == {id(p) for p in model.parameters()}


def fire_at_once(model):
    with torch.no_grad():
        model.halt.bias.fill_(30.0)
    return model


def test_ar_trm_halting_at_the_first_step_still_trains_the_block():
    model = fire_at_once(Model(tiny("ar_trm", budget=12, halt_explore=0.0))).train()
    _, loss = model(*tasks.get_batch("copy", 4, 8, torch.Generator().manual_seed(0)))
    loss.backward()
    assert (model.last_steps == 1).all()  # the whole batch halted after step 1 of 2
    params = (*model.blocks[0].parameters(), model.wte.weight, model.step_emb.weight)
    grads = [p.grad for p in params]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_halt_exploration_holds_each_sequence_to_its_drawn_minimum():
    # N = 4 steps; the head wants to stop at once
    model = fire_at_once(Model(tiny("ar_trm", budget=24)))
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


def test_the_pass_count_reports_executed_passes_and_early_exits():
    model = Model(tiny("ut", budget=12)).eval()
    state = RunState({}, {})
    state.watch(model)
    passes = state.passes
    idx = torch.randint(0, 14, (2, 10))
    with torch.no_grad():
        model.halt.weight.zero_()
        model.halt.bias.fill_(30.0)  # halts at once
    model(idx)
    assert passes["eval"] == Tally(1, 1, 1.0, 1.0, {12: 1})  # one forward, exited early, one step
    never_halt(model)
    model(idx)
    assert passes["eval"] == Tally(2, 1, 13.0, 13.0, {12: 2})  # the second ran all 12 steps
    model.train()
    model(idx)  # training forwards are counted apart
    assert passes["train"] == Tally(1, 0, 12.0, 12.0, {12: 1})
    assert passes["eval"].forwards == 2


def test_the_pass_count_tells_the_steps_a_batch_ran_from_those_a_position_needed():
    # N = 4 steps; the head wants to stop at once, but exploration holds sequences longer
    model = fire_at_once(Model(tiny("ar_trm", budget=24, halt_explore=1.0))).train()
    state = RunState({}, {})
    state.watch(model)
    passes = state.passes
    torch.manual_seed(0)
    model(torch.randint(0, 14, (64, 6)))
    tally = passes["train"]
    assert tally.batch_steps == 4.0  # some sequence drew the full 4 steps: the batch ran 4
    assert tally.early_exits == 0
    assert tally.position_steps == float(model.last_steps.mean())
    assert 2.0 < tally.position_steps < 3.0  # (1+4)/2

# -----------------------------------------------------------------------------
# Extensions for the open question (default off: the paper's behaviour)


@pytest.mark.parametrize("rung", NESTED)
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


@pytest.mark.parametrize("rung", NESTED)
def test_deep_supervision_averages_one_loss_per_step(rung, monkeypatch):
    calls = []
    real = artrm.cross_entropy

    def recorded(logits, targets):
        calls.append(real(logits, targets))
        return calls[-1]

    monkeypatch.setattr(artrm, "cross_entropy", recorded)
    model = never_halt(Model(tiny(rung, budget=18, deep_supervision=True)))  # 3 steps
    log = PassLog(model)
    idx, targets = tasks.get_batch("copy", 4, 2, torch.Generator().manual_seed(0))
    _, loss = model(idx, targets)
    assert len(calls) == 3 and torch.allclose(loss, torch.stack(calls).mean())
    # the last cycle of each step
    assert sum(log.grad) == model.compute_stats()["grad_block_passes"] == 3 * 3


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


def test_halt_loss_targets_halting_exactly_when_every_answer_token_is_right(monkeypatch):
    model = Model(tiny("ar_trm", budget=12, halt_loss=True))
    idx, targets = tasks.get_batch("copy", 4, 3, torch.Generator().manual_seed(0))
    said = targets.clamp(min=0).clone()  # right at every answer token; the prompt says 0
    said[1, -1] = (said[1, -1] + 1) % 10  # sequence 1: its last answer token wrong
    said[2, 0] = (said[2, 0] + 1) % 10  # sequence 2: wrong where the prompt is, not scored
    one_hot = F.one_hot(said, model.config.vocab_size).float()                   # (B, T, V)

    class Says(torch.nn.Module):  # the logits of every position: what `said` holds
        def forward(self, y):
            return one_hot

    model.ln_f, model.lm_head = torch.nn.Identity(), Says()
    bce = []
    monkeypatch.setattr(artrm.F, "binary_cross_entropy_with_logits",
                        lambda q, target: bce.append(target) or target.sum())
    model.step_losses(torch.zeros(3, idx.size(1), model.config.n_embd), targets)
    assert bce[0].tolist() == [1.0, 0.0, 1.0]


def test_extensions_are_refused_where_they_mean_nothing():
    with pytest.raises(ValueError, match="nested_ut and ar_trm only"):
        Config(model="dense", full_grad=True)
    with pytest.raises(ValueError, match="binary halting head"):
        Config(model="nested_ut", halt_loss=True)
    with pytest.raises(ValueError, match="depth of a tied rung"):
        Config(model="dense", random_depth=True)


@pytest.mark.parametrize("rung", TIED)
def test_random_depth_draws_each_training_forward_around_the_rungs_steps(rung):
    model = Model(tiny(rung, budget=24, random_depth=True))
    c = model.config
    assert c.max_steps == artrm.DEPTH_REACH * c.n_steps
    if c.rung.step_emb:  # the step embeddings reach the deepest draw
        assert model.step_emb.num_embeddings == c.max_steps
    torch.manual_seed(0)
    drawn = [model.depth() for _ in range(4000)]
    assert abs(sum(drawn) / len(drawn) - c.n_steps) < 0.05 * c.n_steps  # the mean is N
    assert 1 <= min(drawn) < c.n_steps < max(drawn) <= c.max_steps
    assert len(set(drawn[:20])) > 3  # batch to batch
    torch.manual_seed(0)
    assert [model.depth() for _ in range(4000)] == drawn  # the seed fixes the draws
    model.eval()
    rng = torch.get_rng_state()
    assert model.depth() == c.n_steps and torch.equal(torch.get_rng_state(), rng)
    assert Model(tiny(rung, budget=24)).train().depth() == c.n_steps  # off: the paper's


def test_random_depth_runs_and_counts_the_depth_each_forward_drew():
    model = Model(tiny("iter_step", budget=6, random_depth=True)).train()
    state = RunState({}, {})
    state.watch(model)
    log = PassLog(model)
    idx, targets = tasks.get_batch("reverse", 4, 2, torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    ran = []
    for _ in range(6):
        before = len(log.grad)
        model(idx, targets)[1].backward()  # past N, the drawn steps have embeddings of their own
        ran.append(len(log.grad) - before)
    tally = state.passes["train"]
    assert len(set(ran)) > 1
    assert tally.batch_steps == tally.position_steps == sum(ran)
    assert tally.ceilings == dict(collections.Counter(ran))
    assert tally.drawn()["mean"] == sum(ran) / 6
    assert (tally.drawn()["min"], tally.drawn()["max"]) == (min(ran), max(ran))


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
    keep = targets != tasks.IGNORE_INDEX
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
