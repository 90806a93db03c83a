"""The `hailopipe` command on broken and hostile files: parse-hef, parse-har, infer and run.

For each subcommand, SAMPLE files that the in-process fuzz runs (tests/test_fuzz*.py) saw their
reader refuse, plus the hostile paths (missing, directory, FIFO, dangling symlink, /dev/zero).  Each
must end with exit status 1, one `error: ...` line naming the file, no traceback, and no file
written.  The mutated files run through `hailopipe.cli.main` in processes forked from one driver
(a fresh interpreter costs ~0.6 s a case); the hostile paths through `python -m hailopipe.cli`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from hailopipe.formats import ehef
from tests.conftest import ROOT, random_network
from tests.fuzzing import LINUX_ONLY, PATH_CASES, SAMPLE, TALLIES, _dev_zero, fuzz, tiny_qnet
from tests.test_fuzz import FORMATS as ARCHIVES
from tests.test_fuzz_data import FORMATS as DATA
from tests.test_fuzz_data import image_seeds
from tests.test_fuzz_models import FORMATS as MODELS
from tests.test_fuzz_models import REAL_HEF

pytestmark = [LINUX_ONLY, pytest.mark.skipif(importlib.util.find_spec("hailopipe.cli") is None,
                                             reason="hailopipe.cli not present")]
FORMATS = {**ARCHIVES, **MODELS, **DATA}

CLI_SAMPLE = SAMPLE  # cases per subcommand, plus the hostile paths


def refused_sample(name: str, count: int, seed: int) -> list[bytes]:
    """`count` of format `name`'s mutated files that its reader refused (from its fuzz run)."""
    tally = TALLIES.get(name)
    if tally is None:
        with tempfile.TemporaryDirectory() as tmp:
            tally = fuzz(FORMATS[name], Path(tmp))
    files = tally.refused_files
    return [files[i] for i in np.random.default_rng(seed).permutation(len(files))[:count]]


def cli_runs(tmp: Path) -> dict[str, list[tuple[list[str], str]]]:
    """Per subcommand, (arguments, the file the error must name): CLI_SAMPLE broken files, then the
    hostile paths."""
    good_hef, good_png = tmp / "good.hef", tmp / "good.png"
    good_hef.write_bytes(ehef.compile_network(tiny_qnet(random_network((8,), name="net")), "hailo8"))
    good_png.write_bytes(image_seeds()[0])
    half = CLI_SAMPLE // 2
    real = REAL_HEF.is_file()
    pools = {"parse-hef": [("m.hef", refused_sample("compiled file (ehef.load)", half if real else CLI_SAMPLE, 1))]
             + ([("m.hef", refused_sample("real Hailo HEF (hailo_hef.read)", half, 2))] if real else []),
             "parse-har": [("m.har", refused_sample("har", half, 3)),
                           ("m.har", refused_sample("hn (through har.load)", half, 4))],
             "infer": [("m.hef", refused_sample("compiled file (ehef.load)", half, 5)),
                       ("digit.png", refused_sample("digit image (images.load_digit)", half, 6))],
             "run": [("m.hef", refused_sample("compiled file (ehef.load)", CLI_SAMPLE, 7))]}
    runs: dict[str, list[tuple[list[str], str]]] = {}
    for command, pool in pools.items():
        runs[command] = []
        for filename, payloads in pool:
            for payload in payloads:
                path = tmp / f"{command}-{len(runs[command])}-{filename}"
                path.write_bytes(payload)
                runs[command].append((_cli_args(command, path, good_hef, good_png), str(path)))
        for label, make in PATH_CASES[:4] + [("path:dev-zero", _dev_zero)]:
            path = tmp / f"{command}-{label.split(':')[1]}.hef"
            make(path)
            runs[command].append((_cli_args(command, path, good_hef, good_png), str(path)))
    return runs


def _cli_args(command: str, path: Path, good_hef: Path, good_png: Path) -> list[str]:
    if command == "infer":
        is_image = path.name.endswith(".png")
        return ["infer", str(good_hef), str(path)] if is_image else ["infer", str(path), str(good_png)]
    if command == "run":
        return ["run", str(path), "--frames", "1", "--no-progress"]
    return [command, str(path)]


def forked_cli(argvs: list[list[str]], workdir: Path) -> list[tuple[int, str]]:
    """(exit status, stderr) of `hailopipe ARGV` for each argv, each in its own process forked from
    this one after importing the CLI once (a fresh interpreter per case costs ~0.6 s).  The child does
    what the console script does: call `hailopipe.cli.main(argv)`; an exception escaping it is
    printed as a traceback with status 1, as the interpreter would."""
    from hailopipe import cli

    results = []
    for i, argv in enumerate(argvs):
        err = workdir / f".stderr{i}"
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                with open(os.devnull, "w") as out, open(err, "w") as e:
                    os.dup2(out.fileno(), 1)
                    os.dup2(e.fileno(), 2)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                try:
                    cli.main(argv)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
                except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
                    traceback.print_exc()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        while not (done := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                done = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        results.append((os.waitstatus_to_exitcode(done[1]), err.read_text()))
        err.unlink()
    return results


def cli_driver() -> None:
    """`python -c 'from tests.test_fuzz_cli import cli_driver; cli_driver()' DIR < cases.json`: run
    forked_cli on the JSON list of argvs from stdin and print the results as JSON."""
    print(json.dumps(forked_cli(json.load(sys.stdin), Path(sys.argv[1]))))


def cli_verdict(args: list[str], name: str, status: int, stderr: str) -> str | None:
    """None if `hailopipe ARGS` ended with status 1 and one `error:` line naming `name`, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if status == 1 and "Traceback" not in stderr and len(errors) == 1 and lines[-1] == errors[0] and name in errors[0]:
        return None
    return f"hailopipe {' '.join(args)}: exit {status}\n{stderr[-1500:]}"


def run_cli_cases(runs: list[tuple[list[str], str]], tmp: Path) -> list[str]:
    """Failures: the mutated files through the forked driver (one interpreter), the hostile paths
    through `python -m hailopipe.cli` itself (a fresh interpreter each)."""
    mutated, paths = runs[:-len(PATH_CASES[:5])], runs[-len(PATH_CASES[:5]):]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "from tests.test_fuzz_cli import cli_driver; cli_driver()"
    driver = subprocess.run([sys.executable, "-c", code, str(tmp)],
                            input=json.dumps([a for a, _ in mutated]), capture_output=True, text=True, cwd=tmp,
                            env=env, timeout=600)
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads(driver.stdout)
    for args, _ in paths:
        p = subprocess.run([sys.executable, "-m", "hailopipe.cli", *args], capture_output=True, text=True, cwd=tmp,
                           timeout=60)
        results.append((p.returncode, p.stderr))
    return [f for (args, name), (status, err) in zip(runs, results) if (f := cli_verdict(args, name, status, err))]


@pytest.fixture(scope="module")
def cli_cases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-fuzz")
    return tmp, cli_runs(tmp)


@pytest.mark.parametrize("command", ["parse-hef", "parse-har", "infer", "run"])
def test_cli_on_broken_files(cli_cases, command):
    tmp, runs = cli_cases
    before = sorted(os.listdir(tmp))
    failures = run_cli_cases(runs[command], tmp)
    assert len(runs[command]) >= CLI_SAMPLE
    assert not failures, f"{len(failures)} of {len(runs[command])} cases:\n" + "\n".join(failures[:10])
    assert sorted(os.listdir(tmp)) == before
