"""Builds the engine's native kernel at install time (`pip install .`, or the `-e .` of requirements.txt).

The kernel, hailopipe/engine/_qkernel.c, is a plain shared library that hailopipe/engine/native.py loads
with ctypes (no Python API).  The build is optional: without a C compiler, or off x86-64, the install
goes on, and the engine compiles the kernel on first use where it can, or runs its numpy path (the same
bits).  The library records a hash of the source it was built from, so an edited source is never run
from a stale build.  Everything else about the package is in pyproject.toml.
"""

import hashlib
import platform
from pathlib import Path

from setuptools import Extension, setup

SOURCE = Path("hailopipe/engine/_qkernel.c")
digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
x86 = platform.machine().lower() in ("x86_64", "amd64")
setup(ext_modules=[Extension("hailopipe.engine._qkernel", [str(SOURCE)], optional=True,
                             extra_compile_args=["-O3", "-std=gnu11", "-pthread"], extra_link_args=["-pthread"],
                             define_macros=[("QK_SOURCE", f'"{digest}"')])] if x86 else [])
