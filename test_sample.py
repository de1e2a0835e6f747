"""Tests of sample.py: ask a trained rung, and watch it think step by step."""

import json
import os
import re
import shutil

import pytest
import torch

import artrm
import evaluate
import export
import sample
import train
from artrm import Model
from test_artrm import never_halt, tiny
from test_train import TINY


@pytest.fixture(scope="module")
def solved_copy(tmp_path_factory):
    """A tied rung (iter, 6 steps) that solves copy at L=3 in 200 iterations."""
    out = tmp_path_factory.mktemp("copy")
    flags = TINY + ["--model", "iter", "--task", "copy", "--max_iters", "200", "--batch_size", "32",
                    "--eval_lengths", "3", "--eval_interval", "100", "--log_interval", "100",
                    "--out_dir", str(out)]
    assert train.main(flags) == 0
    rec = json.loads((out / "copy_iter_s1337" / "record.json").read_text())
    assert rec["eval"]["3"]["seq_acc"] == 1.0
    return str(out / "copy_iter_s1337" / "ckpt.pt")


def test_sample_answers_a_copy_prompt_and_shows_every_step(solved_copy, capsys):
    assert sample.main(["--ckpt", solved_copy, "--prompt", "390|", "--prompt", "071|",
                        "--steps"]) == 0
    out = capsys.readouterr().out
    assert "390|390⏎" in out and "071|071⏎" in out
    # every step of the rung, for each prompt
    assert len(re.findall(r"^  step +\d+ ", out, re.M)) == 2 * 6
    # held-out examples, the answer beside
    assert sample.main(["--ckpt", solved_copy, "--examples", "2"]) == 0
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("rung", artrm.LADDER)
def test_the_steps_are_read_from_a_forward_that_they_leave_unchanged(rung):
    torch.manual_seed(0)
    model = never_halt(Model(tiny(rung, budget=12))).eval()
    N = model.config.n_steps
    idx, targets = torch.randint(0, 14, (3, 9)), torch.randint(0, 14, (3, 9))
    seen = []
    with torch.no_grad():
        plain, plain_loss = model(idx, targets)
        watched, watched_loss = model(idx, targets, on_step=lambda t, y, readout: seen.append(t))
    assert torch.equal(watched, plain) and torch.equal(watched_loss, plain_loss)  # bit for bit
    assert seen == list(range(N))  # the observer is called once after every step, in order
    per_step, logits, rec = sample.steps_of(model, idx)
    assert torch.equal(logits, plain)  # recording the steps changes nothing of the forward
    assert len(per_step) == N
    if model.config.rung.halting == "act":  # each position's halting probability, each step
        assert len(rec.p) == N and all(p.shape == idx.shape for p in rec.p)
    if model.config.rung.halting != "act":  # the last step's readout is the model's output, exactly
        assert torch.equal(per_step[-1], plain)
    if model.config.rung.halting == "binary":  # the head's logit, each step
        assert [float(v[0]) for v in rec.logits] == [-30.0] * model.config.n_steps


BAD_PROMPTS = {
    "outside the vocabulary": ["--prompt", "39a|"],
    "is not a copy question": ["--prompt", "390"],
    "is not a copy question ": ["--prompt", "39|0|"],
    "more than the checkpoint's block_size 24": ["--prompt", "0123456789012345|"],
    "--examples takes 1 to 100": ["--examples", "-1"],
    "--temperature must be zero or positive and finite": ["--temperature", "nan"],
}


@pytest.mark.parametrize("want", BAD_PROMPTS)
def test_a_bad_prompt_or_checkpoint_is_one_line_and_exit_2(solved_copy, tmp_path, want, capsys):
    assert sample.main(["--ckpt", solved_copy] + BAD_PROMPTS[want]) == 2
    err = capsys.readouterr().err.strip()
    assert want.strip() in err and len(err.splitlines()) == 1 and err.startswith("error: ")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    for path, says in ((tmp_path / "missing.pt", "no checkpoint at"),
                       (tmp_path / "foreign.pt", "not an artrm")):
        assert sample.main(["--ckpt", str(path), "--prompt", "390|"]) == 2
        assert says in capsys.readouterr().err


def test_an_exported_model_is_small_answers_as_its_checkpoint_and_cannot_be_resumed(
        solved_copy, tmp_path, capsys):
    small = str(tmp_path / "copy_iter.pt")
    assert export.main([solved_copy, small]) == 0
    capsys.readouterr()
    full = torch.load(solved_copy, weights_only=True)
    alone = torch.load(small, weights_only=True)
    assert "optimizer" not in alone and "data_rng" not in alone
    assert alone["task"] == "copy" and alone["iter"] == 200
    assert alone["settings"] == full["settings"]
    assert all(torch.equal(alone["model"][k], v) for k, v in full["model"].items())  # fp32, as is
    assert os.path.getsize(small) < os.path.getsize(solved_copy) / 2
    said = []
    for path in (solved_copy, small):  # the same answers, sampled with the same seed
        assert sample.main(["--ckpt", path, "--prompt", "390|", "--steps",
                            "--temperature", "1"]) == 0
        assert evaluate.main(["--ckpt", path, "--eval_lengths", "3,4", "--eval_examples", "16",
                              "--device", "cpu"]) == 0
        said.append(capsys.readouterr().out.replace(path, "<file>"))
    assert said[0] == said[1] and "390|390⏎" in said[0]
    # a model alone is no checkpoint to resume from, and an export never overwrites
    run = tmp_path / "run" / "copy_iter_s1337"
    run.mkdir(parents=True)
    shutil.copy(small, run / "ckpt.pt")
    assert train.main(TINY + ["--model", "iter", "--task", "copy", "--out_dir",
                              str(tmp_path / "run"), "--resume"]) == 2
    assert "model only" in capsys.readouterr().err
    assert export.main([solved_copy, small]) == 2
    assert "exists" in capsys.readouterr().err
