"""Byte-reproducible artefacts: two runs of the pipeline from scratch give identical bytes.

Two fresh copies of the repo (git-tracked and new files, no outputs, no dvc.lock, reduced params as in
test_pipeline) each run `dvc repro` from nothing; every DVC-tracked out (each file of a directory
out), every metric and `dvc.lock` must be byte-identical.  The HAR archives must carry a fixed
member order, mtime 0 and owner 0.

`built_repo()` hands the first run to the other DVC tests (remote, interrupted stages, queued
experiments); they clone it and never change it.
"""

from __future__ import annotations

import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from hailopipe.fileio import sha256_file
from tests.test_pipeline import fresh_copy, pytestmark, ran_stages, run  # noqa: F401 (pytestmark: needs MNIST)


def tracked_outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file of every out that dvc.lock records (directory outs file by file)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    digests = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = repo / out["path"]
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for f in files:
                digests[str(f.relative_to(repo))] = sha256_file(f)
    return digests


def built_repo(tmp_path_factory) -> Path:
    """A repo copy where `dvc repro` ran once from scratch, outputs and dvc.lock committed (one per
    session; its twin, built the same way, is `twin_of(repo)`).  Clone it beside itself (same
    parent: same DVC remote), never modify it.  The session's temporary directory remembers it: this
    module may be imported twice (by pytest, and by other test modules as tests.test_reproducible)."""
    base = tmp_path_factory.getbasetemp()
    repo, twin = base / "pipeline-a" / "repo", base / "pipeline-b" / "repo"
    if not (base / "pipeline-a" / "built").exists():
        fresh_copy(repo)
        run(base, "git", "clone", "-q", str(repo), str(twin))  # the same sources, byte for byte
        with ThreadPoolExecutor(max_workers=2) as pool:  # the stages use about one core each
            done = list(pool.map(lambda r: run(r, "dvc", "repro"), (repo, twin)))
        for r, p in zip((repo, twin), done):
            assert ran_stages(p) >= {"data", "train", "parse", "optimize", "compile", "evaluate"}, p.stdout
            run(r, "git", "add", "-A")
            run(r, "git", "commit", "-qm", "run")
        (base / "pipeline-a" / "built").touch()
    return repo


def twin_of(repo: Path) -> Path:
    return repo.parent.parent / "pipeline-b" / "repo"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    repo = built_repo(tmp_path_factory)
    return repo, twin_of(repo)


def test_every_output_is_byte_identical(runs):
    a, b = (tracked_outputs(r) for r in runs)
    for must in ("data/mnist.npz", "models/float/model.h5", "models/float/model.tflite", "models/mnist.har",
                 "models/mnist_quantized.har", "models/mnist.hef", "metrics/evaluate.json", "metrics/compile.json",
                 "metrics/predictions.csv", "metrics/train/metrics.json"):
        assert must in a, f"{must} is not a DVC-tracked out"
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


def test_dvc_lock_is_identical(runs):
    a, b = runs
    assert (a / "dvc.lock").read_bytes() == (b / "dvc.lock").read_bytes()


def test_every_metric_is_identical(runs):
    a, b = runs
    metrics = sorted(p.relative_to(a) for p in (a / "metrics").rglob("*") if p.is_file())
    assert metrics and all((a / m).read_bytes() == (b / m).read_bytes() for m in metrics)


@pytest.mark.parametrize("name", ["mnist.har", "mnist_quantized.har"])
def test_archives_have_fixed_order_times_and_owners(runs, name):
    with tarfile.open(runs[0] / "models" / name) as tar:
        members = tar.getmembers()
    assert [m.name.split(".", 1)[1] for m in members][:3] == ["metadata.json", "hn", "npz"]
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in members)
