"""The Slurm job script, slurm/paper.sbatch."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_readme_shows_lines_of_the_job_script_as_they_are():
    with open(os.path.join(HERE, "README.md")) as f:
        after = f.read().split("(slurm/paper.sbatch)", 1)[1]
    shown = after.split("\n\n")[1].splitlines()  # the indented block after the link
    with open(os.path.join(HERE, "slurm", "paper.sbatch")) as f:
        script = f.read().splitlines()
    assert shown and all(line.startswith("    ") and line[4:] in script for line in shown), shown
