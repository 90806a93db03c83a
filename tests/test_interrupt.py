"""Interrupted stages: a stage killed while it writes leaves the previous output whole (or none, never
a truncated file), and the next `dvc repro` recovers.

The kill is made deterministic by a `sitecustomize` put on PYTHONPATH: in every Python process it
wraps `os.fdopen` so that the write of the temporary file behind one named output
(`fileio.atomic_write`'s `.NAME.*.tmp`) stops halfway, flushed to disk, records the process id and
sleeps; the test then SIGKILLs that process (or the whole `dvc repro` process group), as a crash,
the OOM killer or a power cut would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hailopipe.fileio import sha256_file
from hailopipe.formats import ehef
from tests.test_dvc_remote import clone_beside, pushed_repo
from tests.test_pipeline import MNIST, pytestmark, run  # noqa: F401 (pytestmark: needs MNIST)
from tests.test_reproducible import tracked_outputs

HOOK = '''
import os
_TARGET = os.environ.get("HAILOPIPE_TEST_PAUSE")
if _TARGET:
    import time
    _fdopen = os.fdopen

    class _HalfThenSleep:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[:len(data) // 2])
            self._f.flush()
            os.fsync(self._f.fileno())
            tmp = os.readlink(f"/proc/self/fd/{self._f.fileno()}")
            with open(os.environ["HAILOPIPE_TEST_MARKER"] + ".part", "w") as m:
                m.write(f"{os.getpid()}\\n{tmp}\\n")
            os.replace(os.environ["HAILOPIPE_TEST_MARKER"] + ".part", os.environ["HAILOPIPE_TEST_MARKER"])
            time.sleep(600)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    def _fdopen_pausing(fd, *args, **kwargs):
        f = _fdopen(fd, *args, **kwargs)
        try:
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return f
        return _HalfThenSleep(f) if name.startswith("." + _TARGET + ".") else f

    os.fdopen = _fdopen_pausing
'''


def start_paused(repo: Path, tmp: Path, target: str, *cmd: str) -> tuple[subprocess.Popen, int, Path]:
    """Start `cmd` in `repo` with the hook pausing the write of `target`; wait until it is paused
    halfway; return (the process, the id of the process that is writing, its temporary file)."""
    hook = tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    marker = tmp / f"paused-{target}"
    env = dict(os.environ, MNIST_NPZ=os.environ.get("MNIST_NPZ", str(MNIST)), PYTHONPATH=str(hook),
               HAILOPIPE_TEST_PAUSE=target, HAILOPIPE_TEST_MARKER=str(marker),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.Popen(list(cmd), cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{cmd} never reached the write of {target}:\n{proc.communicate()[0].decode()}")
        time.sleep(0.05)
    pid, tmpfile = marker.read_text().split("\n")[:2]
    return proc, int(pid), Path(tmpfile)


@pytest.fixture
def repo(tmp_path_factory, request):
    return clone_beside(pushed_repo(tmp_path_factory), f"interrupt-{request.node.name}".replace("[", "-")
                        .replace("]", ""), pull=True)


def test_killed_stage_keeps_the_previous_output_whole(repo, tmp_path):
    out = repo / "models" / "mnist.hef"
    before = out.read_bytes()
    proc, pid, partial = start_paused(repo, tmp_path, "mnist.hef", sys.executable, "-m", "stages.compile")
    assert pid == proc.pid and partial.parent == out.parent
    assert 0 < partial.stat().st_size < len(before)  # killed mid-write: half of the new file is on disk
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)  # reaps it and closes its output pipe
    assert proc.returncode == -signal.SIGKILL
    assert out.read_bytes() == before  # the previous output, whole
    ehef.load(out)
    assert "up to date" in run(repo, "dvc", "status").stdout
    assert partial.exists()  # SIGKILL leaves the temporary file; no stage ever reads `.*.tmp` files


@pytest.mark.parametrize("kill", ["stage", "dvc and stage"])
def test_killed_dvc_repro_recovers(repo, tmp_path, kill):
    before = tracked_outputs(repo)
    lock = (repo / "dvc.lock").read_bytes()
    out = repo / "models" / "mnist.hef"
    cmd = ("dvc", "repro", "--force", "--single-item", "compile")
    proc, pid, partial = start_paused(repo, tmp_path, "mnist.hef", *cmd)
    assert pid != proc.pid and 0 < partial.stat().st_size
    if kill == "stage":
        os.kill(pid, signal.SIGKILL)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    log = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0, log
    assert not out.exists() or sha256_file(out) == before["models/mnist.hef"], "neither absent nor whole"
    if out.exists():
        ehef.load(out)
    assert (repo / "dvc.lock").read_bytes() == lock
    run(repo, "dvc", "repro")
    assert tracked_outputs(repo) == before
    assert "up to date" in run(repo, "dvc", "status").stdout
