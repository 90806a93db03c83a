"""The hailo backend: the same stages through Hailo's Dataflow Compiler and HailoRT.

Hailo's SDK is not on any package registry; it comes from Hailo's Developer Zone (login required)
as Linux x86_64 wheels.  Without it, choosing `backend: hailo` stops at once with the message
below.  The adapter to the real API is tracked as its own issue; until it lands, each stage says
so plainly rather than pretending.
"""

from __future__ import annotations

import importlib.util

from hailopipe.errors import PipelineError

INSTALL_HINT = (
    "backend 'hailo' needs Hailo's Dataflow Compiler (Python package hailo_sdk_client, wheel "
    "hailo_dataflow_compiler-<ver>-py3-none-linux_x86_64.whl) and, to run on a device, HailoRT "
    "(hailo_platform / hailort wheel); both come from https://hailo.ai/developer-zone/ (login), "
    "for Linux x86_64 and Python 3.8-3.11 (DFC 3.x for hailo8/hailo8r/hailo8l, 5.x for hailo10/15). "
    "Install them into this venv with pip, or set backend: emulator in params.yaml"
)


def check_available() -> None:
    if importlib.util.find_spec("hailo_sdk_client") is None:
        raise PipelineError(f"params.yaml: {INSTALL_HINT}")


def _not_yet(step: str):
    raise PipelineError(f"backend 'hailo': the {step} step through the real SDK is not implemented yet; "
                        "use backend: emulator")


def parse(*args, **kwargs):
    _not_yet("parse")


def optimize(*args, **kwargs):
    _not_yet("optimize")


def compile(*args, **kwargs):
    _not_yet("compile")


def infer_quantized(*args, **kwargs):
    _not_yet("evaluate")


def infer_compiled(*args, **kwargs):
    _not_yet("evaluate")
