"""`pip install .` (not only the editable install) ships every module and data file of the package:
the packages setuptools finds from pyproject.toml are all of hailopipe's, and every non-Python file
in them (the engine's C source, compiled on first use) is package data."""

import fnmatch

import pytest
from setuptools import find_packages

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # the standard library's from Python 3.11


def test_every_package_and_data_file_is_installed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(where=str(ROOT), include=cfg["packages"]["find"]["include"]))
    packages = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "hailopipe").rglob("__init__.py")}
    assert found == packages
    data = cfg["package-data"]
    for path in (ROOT / "hailopipe").rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
            package = path.parent.relative_to(ROOT).as_posix().replace("/", ".")
            assert any(fnmatch.fnmatch(path.name, pattern) for pattern in data.get(package, [])), path
