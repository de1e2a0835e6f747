"""The README and each experiment's notes against the committed records: --report rebuilds the
committed views byte for byte, the notes' tables are the records' numbers, the sweep figure reads
its folders in order, every link resolves and every flag named exists, the front door stays
short, and every committed figure is linked."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

import evaluate
import flags
import grid
import records
import report
import resume
import sample
import train
from records import run_name
from test_artrm import PAPER_RUNGS
from test_train import TINY

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def notes_row(notes, heading, first_cell):
    """The cells of the table row that starts with first_cell, in the section under heading of
    an experiment's notes (results/<experiment>/README.md)."""
    text = open(os.path.join(RESULTS, notes, "README.md")).read().split(heading, 1)[1]
    line = next(l for l in text.splitlines() if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.parametrize("folder", sorted(d for d in os.listdir(RESULTS)
                                           if os.path.isdir(os.path.join(RESULTS, d))))
def test_the_report_over_each_committed_folder_rebuilds_its_committed_view(
        tmp_path, folder, capsys):
    src = os.path.join(RESULTS, folder)
    if not os.path.exists(os.path.join(src, "results.md")):
        pytest.skip(f"{folder} keeps no view")
    out_dir = str(tmp_path / folder)  # a copy: the test writes the views, never into the repository
    shutil.copytree(src, out_dir, ignore=shutil.ignore_patterns("ckpt.pt", "*.png"))
    assert grid.main(["--report", "--out_dir", out_dir]) == 0
    rebuilt = open(os.path.join(out_dir, "results.md")).read()
    assert rebuilt == open(os.path.join(src, "results.md")).read()


def test_the_laptop_notes_table_is_what_the_committed_records_say():
    out_dir = os.path.join(RESULTS, "laptop")
    recs = records.read_records(out_dir)
    assert len(recs) == 63 and all(r["status"] == "ok" for r in recs.values())
    for rung in PAPER_RUNGS:
        row = notes_row("laptop", "# The laptop reproduction", rung)
        for task, cell in (("copy", 1), ("reverse", 3), ("addition", 5)):
            runs = [r for r in recs.values() if r["task"] == task and r["name"] == rung]
            assert row[cell] == report.pm(r["eval"]["6"]["char_acc"] for r in runs), (rung, task)
    tested = records.read_test_budgets(out_dir)
    budgets = {(e["name"], b): [x["budgets"][b]["6"]["char_acc"] for x in tested
                                if x["name"] == e["name"]]
               for e in tested for b in e["budgets"]}
    row = notes_row("laptop", "## Thinking longer at test time", "ut")
    assert row[3].startswith(report.pm(budgets[("ut", "12")]))


@pytest.mark.parametrize("folder,heading", [("open_question", "**Same budget and iterations**"),
                                            ("open_question_flops", "**Matched training FLOPs**")])
def test_the_open_question_notes_tables_are_what_the_committed_records_say(folder, heading):
    recs = list(records.read_records(os.path.join(RESULTS, folder)).values())
    names = sorted({r["name"] for r in recs})
    assert len(recs) == 9 * len(names) and len(names) >= 8
    for name in names:
        row = notes_row("open_question", heading, name)
        for task, cell in (("copy", 3), ("reverse", 4), ("addition", 5)):
            runs = [r for r in recs if r["task"] == task and r["name"] == name]
            acc = report.pm(r["eval"]["6"]["char_acc"] for r in runs)
            assert row[cell] == acc, (folder, name, task)


TOWARD_PAPER = "# From the laptop toward the paper's setting"


def load_script(folder, name):
    """An experiment's own script (results/<folder>/<name>) as a module."""
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(RESULTS, folder, name))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def load_sweep():
    return load_script("toward_paper", "sweep.py")


def test_the_notes_of_the_steps_toward_the_paper_are_what_the_committed_records_say():
    out_dir = os.path.join(RESULTS, "toward_paper")
    recs = records.read_records(out_dir)
    folders, acc = load_sweep().sweep(recs)
    assert [f for f, _ in folders][:2] == ["step0_laptop", "step1_budget24"]
    assert folders[1][1] == "budget=24"
    for name, per_folder in acc["addition"].items():  # the README's table is the records' numbers
        row = notes_row("toward_paper", TOWARD_PAPER, name)
        assert row[1:1 + len(folders)] == [report.pm(a) for a in per_folder], name
    # ... and its commands are the ones they ran: each recorded run would be skipped as finished
    notes = open(os.path.join(RESULTS, "toward_paper", "README.md")).read()
    block = notes.split(TOWARD_PAPER)[1].split("```bash\n")[1].split("```")[0]
    echo = subprocess.run(["bash", "-c", 'python() { printf "%s\\n" "$*"; }\n' + block],
                          capture_output=True, text=True, check=True).stdout
    covered = set()
    for line in echo.splitlines():
        argv = shlex.split(line)
        if argv[0] != "train.py" or "--report" in argv:
            continue
        args = grid.parse_args(argv[1:])
        configs, _ = grid.validate(args)
        args.out_dir = os.path.join(HERE, args.out_dir)
        for run in flags.plan(args):
            path = os.path.relpath(os.path.join(args.out_dir, run_name(*run)), out_dir)
            if path in recs:
                prior = resume.prior(grid.one_run(args, run), configs[run[1]], train.DEFAULTS)
                assert prior.action == "skip", path
                covered.add(path)
    assert covered == set(recs)


def test_the_notes_of_halting_at_test_time_are_what_test_thresholds_json_says():
    thresholds = load_script("random_depth", "thresholds.py")
    out_dir = os.path.join(RESULTS, "random_depth")
    entries = thresholds.read_entries(out_dir)
    assert sorted({e["name"] for e in entries}) == ["dual_ut", "dual_ut+random_depth", "ut",
                                                   "ut+random_depth"]
    assert len(entries) == 12 and all(len(e["thresholds"]) >= 4 for e in entries)
    notes = open(os.path.join(out_dir, "README.md")).read()
    assert report.format_table(*thresholds.table(entries), markdown=True) in notes
    for e in entries:  # the trained threshold is the trained budget's own evaluation
        budgets = os.path.join(os.path.dirname(e["checkpoint"]), "test_budgets.json")
        with open(os.path.join(HERE, budgets)) as f:
            at_budget = json.load(f)["budgets"][str(e["budget"])]
        trained = e["thresholds"][str(e["train_threshold"])]
        assert {n: r["char_acc"] for n, r in trained.items()} == \
            {n: r["char_acc"] for n, r in at_budget.items()}, e["checkpoint"]


def test_the_notes_of_the_paper_setting_are_what_its_records_say():
    out_dir = os.path.join(RESULTS, "toward_paper", "step6_paper")
    for path, r in records.read_records(out_dir).items():
        assert r["config"]["preset"] == "paper", path
        assert r["iters"] == r["config"]["max_iters"] == 5000, path
        row, e = notes_row("toward_paper", "## Step 6", f"{r['name']}, seed {r['seed']}"), r["eval"]
        at = report.at_training_length(r)
        assert row[1:3] == [f"{at['char_acc']:.3f}", f"{at['seq_acc']:.3f}"], path
        assert row[5] == "/".join(f"{q:.2f}" for q in report.quarters(at["pos_acc"])), path
        longer = " / ".join(f"{e[n]['char_acc']:.3f}" for n in ("20", "30", "40", "50"))
        assert row[6] == longer, path
        passes = f"{r['executed_block_passes_train']:.1f} / {r['executed_block_passes_eval']:.1f}"
        assert row[7] == passes, path
        # --eval_only's output
        sampled = open(os.path.join(out_dir, path, "eval_temperature1.txt")).read()
        assert f"char_acc {row[3]} seq_acc {row[4]}" in sampled, path


def test_the_readmes_question_to_the_committed_paper_setting_model_answers_as_shown(capsys):
    text = open(os.path.join(HERE, "README.md")).read()
    command, shown = re.search(r"`python sample\.py (--ckpt results/[^`]+)`.*?\n\n"
                               r"((?:    [^\n]*\n)+)", text, re.S).groups()
    assert sample.main(shlex.split(command)) == 0
    printed = capsys.readouterr().out.splitlines()
    for line in shown.splitlines():  # each line shown (the README leaves some rows out)
        assert line[4:] in printed


def test_the_sweep_figure_reads_the_folders_in_order_and_what_each_changes(tmp_path):
    for budget in ("6", "12"):
        assert train.main(TINY + ["--out_dir", str(tmp_path / f"b{budget}"), "--model", "iter",
                                  "--task", "copy", "--max_iters", "2", "--budget", budget]) == 0
    recs = records.read_records(str(tmp_path))
    folders, acc = load_sweep().sweep(recs)
    assert folders == [("b6", ""), ("b12", "budget=12")]
    first = lambda b: recs[os.path.join(b, "copy_iter_s1337")]["eval"]["3"]["char_acc"]
    assert acc == {"copy": {"iter": [[first(b)] for b in ("b6", "b12")]}}


DOCS = ["README.md"] + sorted(os.path.relpath(p, HERE) for p in
                              [os.path.join(RESULTS, "speed.md")] +
                              [os.path.join(RESULTS, d, "README.md") for d in os.listdir(RESULTS)]
                              if os.path.exists(p))


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_resolves_and_every_flag_named_exists(doc):
    text = open(os.path.join(HERE, doc)).read()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        file = os.path.join(HERE, doc)
        if path:
            file = os.path.normpath(os.path.join(HERE, os.path.dirname(doc), path))
        assert os.path.exists(file), (doc, target)
        if anchor:
            headings = [slug(h) for h in re.findall(r"^#+ (.*)$", open(file).read(), re.M)]
            assert anchor in headings, (doc, target)
    known = ({f"--{k}" for k in {**train.SETTINGS, **flags.GRID, **flags.EVALUATE}}
             | {"--preset", "--report", "--help", "--profile", "--out_dir", "--plot"})
    commands = re.findall(r"python (?:train|grid|evaluate|report|bench)\.py([^`\n]*)",
                          text.replace("\\\n", " "))
    assert commands or doc != "README.md"
    for flag in {f for c in commands for f in re.findall(r"(?<![\w-])(--[a-z_]+)", c)}:
        assert flag in known or flag.replace("--no-", "--") in known, (doc, flag)


def test_the_front_door_stays_a_front_door():
    text = open(os.path.join(HERE, "README.md")).read()
    assert text.count("\n") <= 300  # the findings live in each experiment's notes
    assert "python train.py --model ar_trm --task reverse" in text
    assert "python -m pytest -q" in text
    with open(os.path.join(HERE, ".ci", "run")) as f:
        assert "python -m pytest -q" in f.read()  # CI runs the README's test command


def test_every_committed_figure_is_linked_from_the_docs():
    listed = subprocess.run(["git", "ls-files", "*.png"], cwd=HERE, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("not a git checkout")
    linked = set()
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+\.png)\)", open(os.path.join(HERE, doc)).read()):
            linked.add(os.path.normpath(os.path.join(os.path.dirname(doc), target)))
    assert set(listed.stdout.split()) == linked  # a figure nothing links to is not kept
