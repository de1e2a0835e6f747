"""The Slurm job script (slurm/paper.sbatch) on a real Slurm: slurm/check.sh runs a tiny array
through it, with a requeue and a time limit, and compares the records with the same runs done
in one go. Where no Slurm answers it starts a single-node one, as root from Debian's packages
(about 3 minutes on 2 cores); skipped only where no Slurm answers and none can be started."""

import os
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CANNOT = 77  # check.sh's exit status where no Slurm answers and none can be started here


def test_the_job_script_on_a_real_slurm():
    # no timeout: check.sh bounds its own waits, and a kill would leave its daemons running
    p = subprocess.run(["bash", os.path.join(HERE, "slurm", "check.sh")], cwd=HERE,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    why = p.stderr.strip().splitlines()[-1:] or [""]
    if p.returncode == CANNOT and why[0].startswith("slurm check cannot run here:"):
        pytest.skip(why[0])
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_readme_shows_lines_of_the_job_script_as_they_are():
    with open(os.path.join(HERE, "README.md")) as f:
        after = f.read().split("(slurm/paper.sbatch)", 1)[1]
    shown = after.split("\n\n")[1].splitlines()  # the indented block after the link
    with open(os.path.join(HERE, "slurm", "paper.sbatch")) as f:
        script = f.read().splitlines()
    assert shown and all(line.startswith("    ") and line[4:] in script for line in shown), shown
