"""`pip install .` (not only the editable install) ships every module and data file of the package:
the packages setuptools finds from pyproject.toml are all of hailopipe's, and every non-Python file
in them (the engine's C source) is package data; and the install builds the engine's kernel, which the
installed package then runs without a C compiler."""

import fnmatch
import os
import shutil
import subprocess
import sys

import pytest
from setuptools import find_packages

from hailopipe.engine import native
from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # the standard library's from Python 3.11


def test_every_package_and_data_file_is_installed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(where=str(ROOT), include=cfg["packages"]["find"]["include"]))
    packages = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "hailopipe").rglob("__init__.py")}
    assert found == packages
    data = cfg["package-data"]
    for path in (ROOT / "hailopipe").rglob("*"):
        if path == native.installed_library():  # built by the install itself (setup.py)
            continue
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
            package = path.parent.relative_to(ROOT).as_posix().replace("/", ".")
            assert any(fnmatch.fnmatch(path.name, pattern) for pattern in data.get(package, [])), path


@pytest.mark.skipif(native.load_kernel()[0] is None, reason="the native kernel cannot run here")
def test_pip_install_builds_the_kernel_so_no_compiler_is_needed_at_run_time(tmp_path):
    """`pip install .` compiles the engine's kernel (setup.py); the installed package then runs it
    with no C compiler on the machine (CC names none) and no cache to build into."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "hailopipe", src / "hailopipe", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    code = ("from hailopipe.engine import native; fn, why = native.load_kernel(); "
            "print(native.SOURCE.parent == native.installed_library().parent, native._installed() is not None, "
            "fn is not None, why or '-', *native.paths())")
    env = {**os.environ, "PYTHONPATH": str(target), "CC": str(tmp_path / "no-such-compiler"),
           "HAILOPIPE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:5] == ["True", "True", "True", "-", native.paths()[0]], out.stdout
    assert str(target) in subprocess.run([sys.executable, "-c", "import hailopipe; print(hailopipe.__file__)"],
                                         capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert not (tmp_path / "cache").exists()
