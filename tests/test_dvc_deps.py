"""Every stage's DVC deps cover all the project code its command runs, for every backend.

A stage's import closure is its `python -m stages.<name>` module and every project module it
imports, transitively: every `import` / `from ... import` statement of each module, including
those inside functions (a lazy import still runs), plus the package `__init__` of each module, plus
the backend step module the stage's `main()` asks `stages.shared.backend(p, "<step>")` for (resolved
by `hailopipe.backends.module_name`, the seam's own rule; the check that such calls stand only in a
stage's `main()` is below), plus the data files a module reads (`DATA_FILES`).  The closure must be covered by the stage's deps, each a file or a folder above
it, with `${...}` resolved from params.yaml the way DVC resolves it, for each backend.  A module
that a stage runs but does not list would leave its outputs stale after a change: the test fails
naming the stage and the module.  In the other direction a stage must not depend on a backend it
does not run (the emulator stages do not re-run when the hailo adapter changes).
"""

from __future__ import annotations

import ast
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hailopipe import backends
from hailopipe.engine import native
from tests.conftest import ROOT

PACKAGES = ("hailopipe", "stages")
# Files a module reads at run time beside its own source: they are code too.
DATA_FILES = {"hailopipe/engine/native.py": ["hailopipe/engine/_qkernel.c"]}


def module_file(name: str, root: Path = ROOT) -> str | None:
    """The repo-relative file of project module `name`, or None if it is not one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(root).as_posix()
    return None


def backend_calls(tree: ast.Module) -> list[tuple[ast.Call, str]]:
    """(call, enclosing top-level function) of every `<x>.backend(p, "<step>")` call in a module."""
    calls = []
    for top in tree.body:
        for node in ast.walk(top):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backend"
                    and len(node.args) == 2 and isinstance(node.args[1], ast.Constant)):
                calls.append((node, getattr(top, "name", "")))
    return calls


def imported_modules(path: Path, module: str) -> tuple[set[str], set[str]]:
    """(modules that the file imports anywhere, backend steps its main() asks shared.backend for)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    steps = {call.args[1].value for call, function in backend_calls(tree) if function == "main"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the module's package
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules; non-modules drop out
    return found, steps


def closure(stage_module: str, backend: str, root: Path = ROOT) -> set[str]:
    """Repo-relative files of everything `python -m <stage_module>` can run with `backend`."""
    other = [f"hailopipe.backends.{name}" for name in backends.NAMES if name != backend]
    todo, files = [stage_module], set()
    while todo:
        name = todo.pop()
        if any(name == o or name.startswith(o + ".") for o in other):
            continue  # the seam runs one backend: the other's modules are not this stage's code
        path = module_file(name, root)
        if path is None or path in files:
            continue
        files.add(path)
        files.update(DATA_FILES.get(path, []))
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages' __init__
        found, steps = imported_modules(root / path, name)
        todo += sorted(found)
        if name == stage_module:  # a stage's main() runs only as its command, not when imported
            todo += [backends.module_name(backend, step) for step in steps]
    return files


def resolve(text: str, params: dict) -> str:
    """`${a.b}` in `text` replaced by params a.b, as DVC's templating does with params.yaml."""
    def value(match):
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{\s*([\w.]+)\s*\}", value, text)


def stage_deps(dvc_yaml: dict, params: dict) -> dict[str, tuple[str, list[str]]]:
    """stage -> (its python module, its resolved deps)."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        m = re.match(r"python -m ([\w.]+)", stage["cmd"])
        assert m, f"stage {name}: command {stage['cmd']!r} does not run a project module"
        out[name] = (m.group(1), [resolve(d, params) for d in stage.get("deps", [])])
    return out


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in deps)


def missing(dvc_yaml: dict, params: dict, root: Path = ROOT) -> list[str]:
    """One line per (stage, module) that the stage runs and its deps do not cover."""
    problems = []
    for stage, (module, deps) in stage_deps(dvc_yaml, params).items():
        for path in sorted(closure(module, params["backend"], root)):
            if not covered(path, deps):
                problems.append(f"stage {stage} (backend {params['backend']}): {path} is run but not in its deps")
    return problems


def load():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text()), yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("backend", backends.NAMES)
def test_every_stage_lists_the_code_it_runs(backend):
    dvc_yaml, params = load()
    params["backend"] = backend
    problems = missing(dvc_yaml, params)
    assert not problems, "\n" + "\n".join(problems)


@pytest.mark.parametrize("backend", backends.NAMES)
def test_no_stage_depends_on_a_backend_it_does_not_run(backend):
    dvc_yaml, params = load()
    params["backend"] = backend
    for stage, (_, deps) in stage_deps(dvc_yaml, params).items():
        for other in (n for n in backends.NAMES if n != backend):
            folder = f"hailopipe/backends/{other}"
            assert not [d for d in deps if covered(folder, [d]) or d.startswith(folder)], (stage, other, deps)


def test_every_dep_exists_and_dvc_resolves_them_the_same():
    dvc_yaml, params = load()
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    produced = {next(iter(o)) if isinstance(o, dict) else o
                for stage in dvc_yaml["stages"].values() for kind in ("outs", "metrics") for o in stage.get(kind, [])}
    for stage, (_, deps) in stage_deps(dvc_yaml, params).items():
        for d in deps:
            assert (ROOT / d).exists() or covered(d, sorted(produced)), f"stage {stage}: dep {d} does not exist"
        assert sorted(d["path"] for d in lock[stage]["deps"]) == sorted(deps), f"stage {stage}: dvc.lock is stale"


def test_backends_are_asked_for_only_in_a_stage_main():
    """The closure follows `shared.backend(p, step)` from a stage's main(): no call elsewhere."""
    for path in sorted((ROOT / "stages").glob("*.py")) + sorted((ROOT / "hailopipe").rglob("*.py")):
        calls = backend_calls(ast.parse(path.read_text()))
        assert all(path.parent.name == "stages" and function == "main" for _, function in calls), path


def test_every_data_file_of_the_package_is_declared():
    """A non-Python file in the package is read by some module: DATA_FILES must say which."""
    declared = {f for files in DATA_FILES.values() for f in files}
    data = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hailopipe").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
            and p != native.installed_library()}  # pip's build of _qkernel.c, which .dvcignore leaves out
    assert data == declared


def test_the_kernel_pip_builds_is_outside_every_stage_hash():
    """The library pip builds from _qkernel.c (setup.py) differs by machine and Python: DVC ignores
    it, so it never changes a stage's dep hash, and git ignores it."""
    lib = native.installed_library().relative_to(ROOT).as_posix()
    for tool in (["dvc", "check-ignore", "-q", lib], ["git", "check-ignore", "-q", lib]):
        assert subprocess.run(tool, cwd=ROOT).returncode == 0, tool


def test_the_check_fails_naming_the_stage_and_module(tmp_path):
    """Remove a dep that a stage needs (the folder of the quantization concept from optimize) and
    the check names the stage and what it now misses; the same for a module added to a concept
    folder and imported by code a stage runs, when the deps list files instead of the folder."""
    dvc_yaml, params = load()
    broken = copy.deepcopy(dvc_yaml)
    broken["stages"]["optimize"]["deps"].remove("hailopipe/quantization")
    problems = missing(broken, params)
    prefix = "stage optimize (backend emulator): hailopipe/quantization/"
    assert problems and all(p.startswith(prefix) for p in problems)
    assert "stage optimize (backend emulator): hailopipe/quantization/optimizer.py is run but not in its deps" \
        in problems

    # a new module in a concept, imported lazily inside a function of a module the stage runs
    root = tmp_path / "repo"
    for package in PACKAGES:
        for p in (ROOT / package).rglob("*.py"):
            dest = root / p.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(p.read_text())
    (root / "hailopipe/engine/_qkernel.c").write_text("")
    (root / "hailopipe/formats/extra.py").write_text("X = 1\n")
    har = root / "hailopipe/formats/har.py"
    har.write_text(har.read_text() + "\n\ndef _uses_extra():\n"
                   "    from hailopipe.formats import extra\n    return extra.X\n")
    files_only = copy.deepcopy(dvc_yaml)
    deps = files_only["stages"]["parse"]["deps"]
    deps.remove("hailopipe/formats")
    deps += sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "hailopipe/formats").glob("*.py"))
    assert missing(files_only, params, root) == [
        "stage parse (backend emulator): hailopipe/formats/extra.py is run but not in its deps"]
    assert missing(dvc_yaml, params, root) == []  # the folder dep covers it the day it is added


def test_the_committed_lock_records_the_code_as_it_is():
    """dvc.lock's hash of every code dep is the code's: otherwise a fresh clone's `dvc repro` re-runs
    stages and `git status` shows a changed dvc.lock (data and model deps may be absent here)."""
    p = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    stale = {stage: path for stage, changes in json.loads(p.stdout or "{}").items() for change in changes
             if isinstance(change, dict) for path, how in (change.get("changed deps") or {}).items()
             if path.startswith(("hailopipe/", "stages/")) and how == "modified"}
    assert not stale, f"dvc.lock is stale for {stale}: run dvc repro and commit dvc.lock"
