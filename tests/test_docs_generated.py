"""The generated parts of the docs match their sources.

- `test_measured_tables_current`: every `<!-- BEGIN GENERATED name -->` block (export/README.md,
  docs/tuning.md) is what `python docs/gen_tables.py` renders from the recorded JSON.
- `test_cli_reference_current`: docs/cli.md is the CLI's current `--help` (`docs/gen_cli_help.py`).
"""
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _check(script):
    p = subprocess.run([sys.executable, str(DOCS / script), "--check"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr


def test_measured_tables_current():
    _check("gen_tables.py")


@pytest.mark.slow
def test_cli_reference_current():
    _check("gen_cli_help.py")
