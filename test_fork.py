"""A fork, as the README's "How to fork" tells one: a new rung with a readout of its own (a UT
read out at the step each position halted, not ACT's weighted sum) and a new task (parity,
whose answer is one digit and whose chance is 0.5), each added in the one place it is
defined, then run through train, the report, the figures and sample.py."""

import json

import pytest
import torch

import artrm
import grid
import report
import sample
import tasks
import train
from test_train import TINY


class HaltedStepReadout(artrm.ACTReadout):
    """ACT's halting; each position's output is its state at the step it halted."""

    def update(self, y, t):
        running = ~self.halted
        done = super().update(y, t)
        self.last = y if t == 0 else torch.where(running.unsqueeze(-1), y, self.last)
        self.out = self.last
        return done


@pytest.fixture
def fork(monkeypatch):
    """The fork's three lines: a readout, a row of LADDER, a row of TASKS."""
    monkeypatch.setitem(artrm.READOUTS, "act_halted", HaltedStepReadout)
    monkeypatch.setitem(artrm.LADDER, "ut_halted", artrm.Rung(True, True, "act_halted", False,
                                                              False))
    parity = tasks.Task(1, "", "|", lambda a: a.sum(1, keepdim=True) % 2, 0.5)
    monkeypatch.setitem(tasks.TASKS, "parity", parity)


def test_a_forks_task_and_rung_train_report_plot_and_answer(fork, tmp_path, capsys):
    out = str(tmp_path)
    run = TINY + ["--model", "ut_halted", "--task", "parity", "--max_iters", "4",
                  "--out_dir", out]
    assert train.main(run) == 0
    rec = json.loads((tmp_path / "parity_ut_halted_s1337" / "record.json").read_text())
    assert rec["status"] == "ok" and rec["model"] == "ut_halted"
    assert len(rec["eval"]["3"]["pos_acc"]) == 1  # parity's answer is one digit
    assert 1 <= rec["executed_block_passes_train"] <= 6
    assert tasks.seq_len("parity", 3) == 5  # 3 digits, |, 1 answer digit
    # the report: the fork's rung after the paper's, and parity's own chance
    assert grid.main(["--report", "--plot", "--out_dir", out]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "ut_halted" in md and "chance is 0.50" in md and "chance is 0.10" not in md
    assert report.order_key("ut_halted")[0] == len(artrm.LADDER) - 1
    pytest.importorskip("matplotlib")
    assert (tmp_path / "parity.png").exists() and (tmp_path / "ladder.png").exists()


def test_sample_asks_a_forks_task_and_marks_the_answer(fork, tmp_path, capsys):
    assert train.main(TINY + ["--model", "ut_halted", "--task", "parity", "--max_iters", "2",
                              "--out_dir", str(tmp_path)]) == 0
    ckpt = str(tmp_path / "parity_ut_halted_s1337" / "ckpt.pt")
    capsys.readouterr()
    assert sample.main(["--ckpt", ckpt, "--prompt", "011|", "--prompt", "1101|"]) == 0
    out, err = capsys.readouterr()
    assert "right: 0⏎" in out and "right: 1⏎" in out  # parity of 011 and of 1101
    assert out.count("✓") + out.count("✗") == 2
    assert "1101" in err and "trained on 3" in err  # a warning: 4 digits, trained on 3
    assert sample.main(["--ckpt", ckpt, "--prompt", "011="]) == 2  # parity's separator is |
