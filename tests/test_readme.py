"""The README's commands and Python snippets run as written, on a fresh copy of the repo.

Every ```bash and ```python block of README.md runs, in order, in a copy of the repo whose pipeline
has been built with reduced params (tests/test_pipeline.py's `fresh_copy`), except the two that
CI itself is: the set-up line (`pip install -r requirements.txt ... dvc repro`, what .ci/run does)
and the test command.  A bash block runs line by line; every line must exit 0.  What a block says
it shows is checked where it is a figure a user relies on: the experiments view fits 100 columns
with the compiled accuracy in it, and after the recovery command `dvc repro` runs no stage.
"""

from __future__ import annotations

import re
import shutil
import sys

import pytest

from tests.conftest import ROOT
from tests.test_pipeline import fresh_copy, pytestmark, ran_stages, run  # noqa: F401 (pytestmark: needs MNIST)

CI_ITSELF = ("pip install -r requirements.txt", "python -m pytest -q")


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every bash and python block of README.md, in order."""
    text = (ROOT / "README.md").read_text()
    return [(lang, body) for lang, body in re.findall(r"^```(bash|python)\n(.*?)^```", text, re.S | re.M)
            if not any(marker in body for marker in CI_ITSELF)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = fresh_copy(tmp_path_factory.mktemp("readme") / "repo")
    shutil.copytree(ROOT / "tests" / "data" / "digits", repo / "tests" / "data" / "digits")
    run(repo, "dvc", "repro")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "pipeline")
    return repo


def test_the_readme_has_what_this_test_runs():
    langs = [lang for lang, _ in blocks()]
    assert langs.count("python") >= 1 and langs.count("bash") >= 4


def test_every_readme_command_and_snippet_runs(repo):
    for lang, body in blocks():
        if lang == "python":
            p = run(repo, sys.executable, "-c", body, check=False)
            assert p.returncode == 0, (body, p.stderr[-2000:])
            continue
        for line in (ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")):
            p = run_line(repo, line)
            assert p.returncode == 0, (line, p.stdout[-2000:], p.stderr[-2000:])
            if line.startswith("dvc exp show"):  # the view: 100 columns, the compiled accuracy in them
                header = next(h for h in p.stdout.splitlines() if "Experiment" in h)
                assert "compiled.accuracy" in header and len(header.rstrip()) <= 100, p.stdout
            if line.startswith("git checkout -- params.yaml dvc.lock metrics"):  # the recovery command
                assert ran_stages(run(repo, "dvc", "repro")) == set()


def run_line(repo, line: str):
    """One README line through bash, in `repo`, as a user's terminal 100 columns wide would run it."""
    return run(repo, "bash", "-c", f"COLUMNS=100 {line}", check=False)
