"""DVC for more than one machine: the repo's default remote, push/pull, `dvc repro --pull` on a fresh
clone, and a queued parameter sweep run by parallel workers (docs/scale-out.md).

The remote in .dvc/config is the directory `dvc-remote` beside the checkout (`url = ../../dvc-remote`,
relative to .dvc/), so clones made beside a run of the pipeline (test_reproducible.built_repo) share it.
"""

from __future__ import annotations

import configparser
import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_pipeline import pytestmark, ran_stages, run  # noqa: F401 (pytestmark: needs MNIST)
from tests.test_reproducible import built_repo, tracked_outputs

SWEEP = (100, 150)  # calibration.size values of the queued sweep


def pushed_repo(tmp_path_factory) -> Path:
    """built_repo() with its outputs pushed to its default remote (once per session)."""
    repo = built_repo(tmp_path_factory)
    if not (repo.parent / "pushed").exists():
        run(repo, "dvc", "push")
        (repo.parent / "pushed").touch()
    return repo


def clone_beside(repo: Path, name: str, pull: bool = False) -> Path:
    """A git clone of `repo` in the same parent directory (so the same remote), optionally pulled."""
    dest = repo.parent / name
    run(repo.parent, "git", "clone", "-q", str(repo), str(dest))
    run(dest, "git", "config", "user.name", "t")
    run(dest, "git", "config", "user.email", "t@example.com")
    if pull:
        run(dest, "dvc", "pull")
    return dest


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Path:
    return pushed_repo(tmp_path_factory)


def test_repo_config_has_a_local_default_remote():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    name = config["core"]["remote"]
    section = next(s for s in config.sections() if s.strip("'") == f'remote "{name}"')  # DVC quotes the name
    assert config[section]["url"] == "../../dvc-remote"  # relative to .dvc/: beside the checkout


def test_push_fills_the_remote(pushed):
    remote = pushed.parent / "dvc-remote"
    assert remote.is_dir() and sum(1 for p in remote.rglob("*") if p.is_file()) >= 5
    status = run(pushed, "dvc", "status", "--cloud").stdout
    assert "in sync" in status, status


def test_pull_round_trip(pushed):
    clone = clone_beside(pushed, "pulled")
    assert not (clone / "models" / "mnist.hef").exists() and not (clone / "data" / "mnist.npz").exists()
    run(clone, "dvc", "pull")
    assert tracked_outputs(clone) == tracked_outputs(pushed)
    assert "up to date" in run(clone, "dvc", "status").stdout
    assert run(clone, "git", "status", "--porcelain").stdout == ""


def test_repro_pull_on_a_fresh_clone_runs_nothing(pushed):
    clone = clone_beside(pushed, "fresh")
    p = run(clone, "dvc", "repro", "--pull")
    assert ran_stages(p) == set() and "Running stage" not in p.stdout + p.stderr, p.stdout
    assert tracked_outputs(clone) == tracked_outputs(pushed)
    assert "up to date" in run(clone, "dvc", "status").stdout


# --- queued experiments ----------------------------------------------------------------------------


def wait_for_queue(repo: Path, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = run(repo, "dvc", "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status) or time.monotonic() > deadline:
            return status
        time.sleep(3)


@pytest.fixture(scope="module")
def sweep(pushed) -> tuple[Path, str]:
    repo = clone_beside(pushed, "sweep", pull=True)  # the local cache feeds the workers' unchanged stages
    for size in SWEEP:
        run(repo, "dvc", "exp", "run", "--queue", "-S", f"calibration.size={size}", "-n", f"cal{size}")
    run(repo, "dvc", "queue", "start", "-j", "2")
    try:
        status = wait_for_queue(repo)
    finally:
        run(repo, "dvc", "queue", "stop", check=False)
    return repo, status


def test_queued_sweep_succeeds_running_only_the_tail(sweep):
    repo, status = sweep
    for size in SWEEP:
        assert re.search(rf"cal{size}\s+.*Success", status), status
        ran = ran_stages(run(repo, "dvc", "queue", "logs", f"cal{size}"))
        assert {"optimize", "compile", "evaluate"} <= ran and not ran & {"data", "train", "parse"}, ran


def test_exp_show_compares_the_sweep(sweep, pushed):
    repo, _ = sweep
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    exps = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            d = exp["revs"][0]["data"]
            exps[exp["name"]] = (d["params"]["params.yaml"]["data"]["calibration"]["size"],
                                 d["metrics"]["metrics/evaluate.json"]["data"]["compiled"]["accuracy"],
                                 {k: v["hash"] for k, v in d["outs"].items()})
    assert {name: size for name, (size, _, _) in exps.items()} == {f"cal{s}": s for s in SWEEP}
    (_, acc_a, outs_a), (_, acc_b, outs_b) = exps["cal100"], exps["cal150"]
    assert 0.5 < acc_a <= 1 and 0.5 < acc_b <= 1
    assert outs_a["models/mnist_quantized.har"] != outs_b["models/mnist_quantized.har"]
    for upstream in ("data/mnist.npz", "models/float", "models/mnist.har"):
        assert outs_a[upstream] == outs_b[upstream]  # restored from the cache, not retrained
    table = run(repo, "dvc", "exp", "show", "--md", "--only-changed").stdout
    assert "cal100" in table and "cal150" in table
