"""The code passes the linter configured in pyproject.toml (ruff, pinned in requirements.txt):
unused imports and variables, undefined names, ambiguous names like `l`, import order, likely bugs."""

import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_passes():
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout + p.stderr
