"""Tests of report.py: tables and figures from the records alone (mean and std over seeds, a
model or task this code lacks, the figures, an experiment of several grids), served by
`grid.py --report`."""

import importlib.util
import json
import sys

import pytest

import figures
import grid
import records
import report
import train
from test_grid import results
from test_train import TINY


def test_mean_and_std_over_seeds():
    m, s = report.mean_std([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7) and s == pytest.approx(0.2)  # sample std (n-1)
    assert report.mean_std([0.25]) == (0.25, 0.0)
    assert report.pm([1.0, 0.0]) == "0.500±0.707"
    assert report.pm([0.25]) == "0.250"  # one seed: no spread shown
    assert report.quarters([1, 1, 0.5, 0.5, 0, 0, 0, 1]) == [1, 0.5, 0, 0.5]


def test_a_model_or_task_this_code_lacks_still_reports(tmp_path, capsys):
    assert train.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter", "--task", "copy",
                              "--max_iters", "2"]) == 0
    rec = json.loads((tmp_path / "copy_iter_s1337" / "record.json").read_text())
    (tmp_path / "sort_mine_s1").mkdir()  # a fork's rung and task, reported beside the ladder's
    mine = {**rec, "task": "sort", "model": "mine", "name": "mine", "seed": 1}
    records.write_json(str(tmp_path / "sort_mine_s1" / "record.json"), mine)
    plot = ["--plot"] if importlib.util.find_spec("matplotlib") else []
    assert grid.main(["--report", "--out_dir", str(tmp_path)] + plot) == 0
    out = capsys.readouterr().out
    assert "\nmine " in out.split("== sort")[1] and "\niter " in out.split("== copy")[1]


def test_the_table_shows_the_flops_spent_where_every_record_of_a_row_holds_them(tmp_path):
    assert train.main(TINY + ["--out_dir", str(tmp_path), "--model", "ut", "--task", "copy",
                              "--max_iters", "2"]) == 0
    new = json.loads((tmp_path / "copy_ut_s1337" / "record.json").read_text())
    old = {k: v for k, v in new.items() if not k.startswith("spent_")}  # as older code wrote
    column = lambda header: next(i for i, h in enumerate(header) if h.startswith("train MFLOP"))
    header, rows = report.table_rows([old, {**old, "seed": 2}])
    assert header[column(header)] == "train MFLOP/tok exec (ceiling)"  # older tables read as before
    header, rows = report.table_rows([new, {**old, "seed": 2}, {**new, "model": "dense",
                                                               "name": "dense"}])
    i, spent = column(header), new["spent_train_flops_per_token"] / 1e6
    assert header[i] == "train MFLOP/tok exec/spent (ceiling)"
    cells = {row[0]: row[i] for row in rows}
    # one of its seeds did not count them: the mean with what that seed spent at least
    at_least = (new["spent_train_flops_per_token"] + report.spent_floor(old)) / 2e6
    assert cells["ut"].split(" ")[0].endswith(f"/≥{at_least:.2f}")
    assert cells["dense"].split(" ")[0].endswith(f"/{spent:.2f}")


def test_figures_place_a_run_at_the_flops_its_batches_spent_and_say_when_unknown():
    old = {"train_flops_per_token": 6.0, "executed_train_flops_per_token": 2.0,
           "early_exit_fraction_train": 0.1}  # older: positions' steps only
    new = {**old, "spent_train_flops_per_token": 5.0}
    assert figures.flops_per_token(new) == 5.0
    assert figures.flops_per_token(old) == 5.4  # at least: 90% of its forwards ran all 6.0
    assert figures.flops_caveat([new, new]) == ()
    assert "at least" in figures.flops_caveat([new, old])[0]  # one older record: said
    never = {**old, "early_exit_fraction_train": 0.0}  # no forward stopped early: known
    assert figures.flops_caveat([new, never]) == ()


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    assert train.main(TINY + ["--out_dir", str(tmp_path), "--model", "iter", "--task", "copy",
                              "--max_iters", "2"]) == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert grid.main(["--report", "--out_dir", str(tmp_path), "--plot"]) == 0
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_plot_writes_position_and_learning_curves(tmp_path):
    pytest.importorskip("matplotlib")
    for model in ("iter", "ut"):
        assert train.main(TINY + ["--out_dir", str(tmp_path), "--model", model, "--task", "reverse",
                                  "--max_iters", "10"]) == 0
    assert grid.main(["--report", "--out_dir", str(tmp_path), "--plot"]) == 0
    png = tmp_path / "reverse.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_report_over_an_experiment_of_several_grids_keeps_their_rows_apart(tmp_path, capsys):
    for budget in ("6", "12"):  # one grid per budget, each in a folder of the experiment
        assert train.main(TINY + ["--out_dir", str(tmp_path / f"b{budget}"), "--model", "iter",
                                  "--task", "copy", "--max_iters", "2", "--budget", budget]) == 0
    capsys.readouterr()
    assert grid.main(["--report", "--out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\niter budget=6 " in out and "\niter budget=12 " in out
    assert len(results(tmp_path)) == 2


def test_flops_spent_are_the_batches_count_and_a_run_that_never_stopped_early_spent_its_ceiling():
    # records from before batches were counted: executed is what the positions needed
    never = {"train_flops_per_token": 4.0, "executed_train_flops_per_token": 4.0,
             "early_exit_fraction_train": 0.0}  # e.g. iter, or ar_trm whose head never fires
    assert report.spent_flops(never) == 4.0
    older = {"train_flops_per_token": 4.0, "executed_train_flops_per_token": 3.0,
             "early_exit_fraction_train": 0.05}
    assert report.spent_flops(older) is None  # unknown: some batches ran more than 3.0
    counted = {**older, "spent_train_flops_per_token": 3.5}
    assert report.spent_flops(counted) == 3.5
    # older still spent at least what its forwards that never stopped early ran: 0.95 x 4.0
    assert report.spent_mflop([{**counted, "spent_train_flops_per_token": 3.5e6},
                               {**older, "train_flops_per_token": 4e6}]) == "≥3.65"
    # and at least what its positions needed, where nearly every forward stopped early
    assert report.spent_floor({**older, "early_exit_fraction_train": 0.9}) == 3.0
