"""The README's two commands on a machine set up as the README says: the demo end to end, and the bootstrap,
each run as a user runs it, printing only the project's own output."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARNINGS = re.compile(r"warn|deprecat|notice", re.IGNORECASE)


def test_demo_trains_an_ensemble_whose_meis_resemble_the_true_receptive_fields(
    database, clean_framework_tables, tmp_path
):
    command = [sys.executable, "-m", "mei_service.demo", "--out", str(tmp_path), "--workers", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    [mean_correlation] = re.findall(r"mean correlation of MEIs with true receptive fields: ([\d.]+)", run.stdout)
    assert float(mean_correlation) > 0.8
    assert (tmp_path / "meis.png").read_bytes().startswith(b"\x89PNG")
    assert " ready." in (tmp_path / "workers.log").read_text()
    assert not WARNINGS.findall(run.stdout + run.stderr), run.stdout + run.stderr


def test_the_bootstrap_prints_nothing_when_all_is_well():
    run = subprocess.run([ROOT / "scripts" / "bootstrap"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and run.stdout + run.stderr == ""
