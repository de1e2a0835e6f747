"""Tests of evaluate.py: a saved checkpoint evaluated at new lengths (--eval_only), and thinking
longer or shorter at test time (--eval_budgets, --step_extend)."""

import argparse
import json

import pytest
import torch

import artrm
import evaluate
import flags
import grid
import records
import tasks
import train
from artrm import Model
from test_artrm import never_halt, tiny
from test_grid import results, run_grid
from test_train import TINY


def test_eval_only_evaluates_a_checkpoint_at_new_lengths(tmp_path, capsys):
    assert train.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter_step",
                              "--task", "reverse", "--max_iters", "3"]) == 0
    capsys.readouterr()
    # the checkpoint's own config wins: a different budget asked for is ignored
    assert evaluate.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter_step",
                                 "--task", "reverse", "--eval_only", "--eval_lengths", "2,5",
                                 "--budget", "12"]) == 0
    out = capsys.readouterr().out
    assert "L=2: char_acc" in out and "L=5: char_acc" in out


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


@pytest.mark.parametrize("rung", [r for r, row in artrm.LADDER.items() if row.tied])
def test_its_own_budget_gives_the_normal_evaluation_and_more_budget_runs_more_passes(rung):
    torch.manual_seed(0)
    model = never_halt(Model(tiny(rung, budget=6)))
    normal = tasks.evaluate(model, "copy", [3], 16, "cpu")
    same = tasks.evaluate(model, "copy", [3], 16, "cpu", n_steps=model.config.n_steps)
    assert same == normal
    longer = tasks.evaluate(model, "copy", [3], 16, "cpu", n_steps=2 * model.config.n_steps)
    assert longer["3"]["passes"] == 2 * normal["3"]["passes"] == 12


def test_eval_budgets_are_recorded_beside_the_run_and_reported(tmp_path, capsys):
    assert run_grid(tmp_path, "--model", "iter,ut", "--task", "copy", "--max_iters", "2",
                    "--eval_budgets", "3,6,12", "--eval_lengths", "3") == 0
    e = json.loads((tmp_path / "copy_ut_s1337" / "test_budgets.json").read_text())
    assert (e["train_budget"], e["extend"], e["seed"], sorted(e["budgets"])) == \
        (6, "cycle", 1337, ["12", "3", "6"])
    own = results(tmp_path)[1]["eval"]["3"]["char_acc"]
    assert e["budgets"]["6"]["3"]["char_acc"] == own  # ut's own budget
    capsys.readouterr()
    assert grid.main(["--report", "--out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "thinking longer or shorter" in out and "budget 12" in out and "\nut (cycle)" in out
    # and on a saved checkpoint, with the other way of extending the step embeddings
    assert evaluate.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter", "--task", "copy",
                                 "--eval_budgets", "24", "--step_extend", "last"]) == 0
    e = json.loads((tmp_path / "copy_iter_s1337" / "test_budgets.json").read_text())
    assert e["extend"] == "last" and list(e["budgets"]) == ["24"]
    assert e["budgets"]["24"]["3"]["passes"] == 24


@pytest.mark.parametrize("rung", [r for r, row in artrm.LADDER.items() if row.tied])
def test_a_test_budget_is_block_passes_whatever_a_step_spends(rung, tmp_path):
    """nested_ut and ar_trm spend 6 passes a step: a test budget of 12 is 2 of their steps."""
    torch.manual_seed(0)
    model = never_halt(Model(tiny(rung, budget=12))).eval()
    k = model.config.passes_per_step
    args = argparse.Namespace(eval_budgets=[12, 24], eval_lengths=[3], eval_examples=8,
                              temperature=0.0, step_extend="cycle")
    got = evaluate.evaluate_budgets(model, "copy", 1, args, "cpu", str(tmp_path / "ckpt.pt"), 0)
    assert {b: got[b]["3"]["passes"] for b in got} == {"12": 12, "24": 24}, k
    if k > 1:  # a budget that is no whole number of steps is refused, as in training
        with pytest.raises(records.UserError, match="impossible"):
            evaluate.check_test_budgets(model.config, argparse.Namespace(
                eval_budgets=[k + 1], step_extend="cycle"))


def test_the_budget_figure_has_a_panel_per_length_and_a_line_per_model(monkeypatch):
    pytest.importorskip("matplotlib")
    saved = []
    monkeypatch.setattr(evaluate.figures, "save", lambda fig, path: saved.append(fig))
    at = lambda acc, lengths, b: {str(n): {"char_acc": acc, "passes": b} for n in lengths}
    entry = lambda name, seed, acc, lengths: {
        "task": "addition", "name": name, "model": "iter", "seed": seed, "train_budget": 2,
        "extend": "cycle", "temperature": 0.0, "eval_examples": 8,
        "budgets": {"1": at(acc, lengths, 1.0), "2": at(acc + 0.25, lengths, 2.0)}}
    entries = [entry("iter", 1, 0.25, [6]), entry("iter", 2, 0.5, [6]),
               entry("iter+random_depth", 1, 0.125, [6, 12])]
    evaluate.plot_budgets(entries, "out", {})
    six, twelve = saved[0].axes[:2]
    assert [ax.get_title() for ax in (six, twelve)] == [
        "addition: thinking longer at test time (L=6)",
        "addition: thinking longer at test time (L=12)"]
    means = lambda ax: {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()
                        if not ln.get_label().startswith("_")}
    assert means(six) == {"iter (cycle)": [0.375, 0.625],
                          "iter+random_depth (cycle)": [0.125, 0.375]}
    assert means(twelve) == {"iter+random_depth (cycle)": [0.125, 0.375]}  # iter: no L=12


@pytest.mark.parametrize("rung", [r for r, row in artrm.LADDER.items() if row.halting == "act"])
def test_a_lower_halting_threshold_halts_sooner_and_the_trained_one_is_the_normal_evaluation(
        rung, tmp_path):
    torch.manual_seed(0)
    model = Model(tiny(rung, budget=24)).eval()
    k, n_steps = model.config.passes_per_step, model.config.n_steps
    normal = tasks.evaluate(model, "copy", [3], 8, "cpu")
    with torch.no_grad():  # every position's p is 0.3 at every step: it halts at ceil(t / 0.3)
        model.halt.weight.zero_()
        model.halt.bias.fill_(torch.logit(torch.tensor(0.3)).item())
    args = argparse.Namespace(eval_thresholds=[0.25, 0.5, 0.8, artrm.HALT_THRESHOLD],
                              eval_lengths=[3], eval_examples=8, temperature=0.0)
    got = evaluate.evaluate_thresholds(model, "copy", 1, args, "cpu", str(tmp_path / "c.pt"), 0)
    ran = {t: (r["3"]["passes"], r["3"]["spent_passes"]) for t, r in got.items()}
    assert ran == {str(t): (min(s, n_steps) * k,) * 2
                   for t, s in zip(args.eval_thresholds, [1, 2, 3, 4])}
    assert model.halt_threshold == artrm.HALT_THRESHOLD  # put back after
    saved = json.loads((tmp_path / "test_thresholds.json").read_text())
    assert (saved["name"], saved["budget"], saved["thresholds"]) == (rung, 24, got)
    torch.manual_seed(0)
    model = Model(tiny(rung, budget=24)).eval()  # as before: the trained threshold changes nothing
    again = evaluate.evaluate_thresholds(model, "copy", 1, argparse.Namespace(
        **{**vars(args), "eval_thresholds": [artrm.HALT_THRESHOLD]}), "cpu",
        str(tmp_path / "c.pt"), 0)
    assert again[str(artrm.HALT_THRESHOLD)] == normal


def test_a_batch_spends_the_steps_of_its_last_position_to_halt():
    torch.manual_seed(0)
    model = Model(tiny("ut", budget=12)).eval()
    with torch.no_grad():  # halting that differs from position to position
        model.halt.weight.normal_(0, 1.0)
    r = tasks.evaluate(model, "copy", [3], 8, "cpu")["3"]
    assert r["passes"] < r["spent_passes"] <= 12
    dense = tasks.evaluate(Model(tiny("dense", budget=6)), "copy", [3], 8, "cpu")["3"]
    assert dense["passes"] == dense["spent_passes"] == 6


@pytest.mark.parametrize("rung", [r for r, row in artrm.LADDER.items() if row.halting != "act"])
def test_a_halting_threshold_is_refused_for_a_rung_without_act_and_outside_0_1(rung):
    with pytest.raises(records.UserError, match=f"{rung} has no ACT halting"):
        evaluate.check_thresholds(tiny(rung, budget=24), [0.5])
    evaluate.check_thresholds(tiny(rung, budget=24), [])  # none asked: nothing to refuse
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(records.UserError, match="must each be in \\(0, 1\\]"):
            evaluate.check_thresholds(tiny("ut", budget=24), [bad])
    with pytest.raises(records.UserError, match="--eval_thresholds takes a comma list of numbers"):
        flags.comma_list("0.5,x", "--eval_thresholds", float, "numbers")
