"""Plumbing between the hailo backend and Hailo's closed-source packages: whether and which ones are
installed (`check_available`, `check_versions`: Hailo-8 needs DFC 3.x + HailoRT 4.x,
Hailo-10/12/15 need 5.x), importing them (`load_sdk()`, `load_hailort()`), whether the DFC has a GPU
(`gpu_available`), and turning what they do into this project's conventions: any exception into
one PipelineError line (`sdk_call`), a HAR saved atomically (`save_har`), the SDK's log records
collected for the stage's report (`sdk_records`).  The other modules of `hailopipe.backends.hailo`
use these; nothing here runs a stage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from hailopipe.errors import PipelineError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "backend 'hailo' needs Hailo's Dataflow Compiler (module hailo_sdk_client, wheel "
    "hailo_dataflow_compiler-<version>-py3-none-linux_x86_64.whl) and, to run the HEF on a device, "
    "HailoRT (module hailo_platform, wheel hailort-<version>-cp3XX-cp3XX-linux_<arch>.whl); both "
    "come from Hailo's Developer Zone https://hailo.ai/developer-zone/ (registration required), for "
    "Linux x86_64 (HailoRT also aarch64) and Python 3.10-3.11 (DFC 3.31-3.33; DFC 5.x 3.10-3.12): DFC 3.x with "
    "HailoRT 4.x for hailo8/hailo8r/hailo8l, DFC 5.x with HailoRT 5.x for hailo10h/hailo10p/hailo12l/hailo15h/m/l. "
    "`pip install` both wheels into this venv (see docs/hailo-backend.md), or set backend: emulator "
    "in params.yaml"
)
# hw_arch -> (family, DFC major, HailoRT major): reference "Version split"; the 5.x list is Model Zoo
# 5.2's (`hw_utils`, `base_parsers`).
FAMILIES = {**{a: ("Hailo-8", 3, 4) for a in ("hailo8", "hailo8r", "hailo8l")},
            **{a: ("Hailo-10/12/15", 5, 5) for a in ("hailo10h", "hailo10p", "hailo12l", "hailo15h", "hailo15m",
                                                     "hailo15l")}}


# --- availability, versions ------------------------------------------------------------------

def check_available() -> None:
    """Called by backends.get("hailo"): without hailo_sdk_client, one error saying what to install."""
    if importlib.util.find_spec("hailo_sdk_client") is None:
        here = f"Python {sys.version_info.major}.{sys.version_info.minor} on {platform.system()} {platform.machine()}"
        raise PipelineError(f"{INSTALL_HINT} (this interpreter: {here})")


class _NeverRaised(Exception):
    """Stands for the DFC's parsing exception where its module cannot be imported."""


def load_sdk() -> SimpleNamespace:
    """The DFC classes the adapter uses; a broken install is one clear error, not a traceback."""
    check_available()
    try:
        import hailo_sdk_client
        from hailo_sdk_client import ClientRunner, InferenceContext
        from hailo_sdk_client.exposed_definitions import States
    except Exception as exc:  # ImportError, or whatever a mismatched TF/numpy raises at import
        raise PipelineError(f"hailo_sdk_client is installed but does not import ({type(exc).__name__}: {exc}); "
                            "reinstall the Dataflow Compiler wheel in a clean venv") from None
    try:  # an internal module: a DFC that moves it is still a working install, its parse errors still one line
        from hailo_sdk_client.model_translator.exceptions import ParsingWithRecommendationException as parsing_error
    except ImportError:
        log.debug("hailo_sdk_client.model_translator.exceptions not found; parse errors are reported generically")
        parsing_error = _NeverRaised
    return SimpleNamespace(ClientRunner=ClientRunner, InferenceContext=InferenceContext, States=States,
                           ParsingError=parsing_error,
                           version=installed_version(hailo_sdk_client, "hailo-dataflow-compiler"))


def load_hailort():
    try:
        import hailo_platform
    except Exception as exc:  # ImportError, or HailoRT's MissingPyHRTLib / version-mismatch errors
        raise PipelineError(f"running the HEF needs HailoRT (hailo_platform), which does not import "
                            f"({exc}); {INSTALL_HINT}") from None
    return hailo_platform


def installed_version(module, dist: str) -> str:
    from importlib import metadata

    version = getattr(module, "__version__", None)
    if version is None:
        with contextlib.suppress(metadata.PackageNotFoundError):
            version = metadata.version(dist)
    return str(version or "unknown")


def check_versions(hw_arch: str, dfc: str | None = None, hailort: str | None = None, where: str = "") -> None:
    """Hailo-8 family needs DFC 3.x / HailoRT 4.x, Hailo-10/15 need 5.x: one clear error otherwise."""
    where = where or f"hw_arch {hw_arch}"
    if hw_arch not in FAMILIES:
        raise PipelineError(f"hw_arch {hw_arch!r} is not one of {', '.join(FAMILIES)}")
    family, dfc_major, hrt_major = FAMILIES[hw_arch]
    for what, version, major in (("Dataflow Compiler (hailo_sdk_client)", dfc, dfc_major),
                                 ("HailoRT (hailo_platform)", hailort, hrt_major)):
        if version not in (None, "unknown") and version.split(".")[0] != str(major):
            raise PipelineError(
                f"{where} ({family} family) needs the {what} {major}.x, but "
                f"{version} is installed; Hailo-8/8R/8L use DFC 3.x + HailoRT 4.x, Hailo-10/12/15 use "
                "DFC 5.x + HailoRT 5.x (set hw_arch to match, or install the matching wheels)")


def major(version: str) -> int | None:
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else None


def gpu_available() -> bool | None:
    """Whether the DFC's optimizer has a GPU: False when CUDA_VISIBLE_DEVICES hides every GPU (the
    DFC's `hailo_model_optimization` sets "99" at import when it finds no usable one, and the GPU
    it picks otherwise; "-1" or "" is a user's choice of CPU), else TensorFlow's answer once the DFC
    has imported it (the check luxonis/modelconverter makes), else True when CUDA_VISIBLE_DEVICES
    names a GPU, else None: unknown."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "99"):
        return False
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        with contextlib.suppress(Exception):
            return bool(tf.config.list_physical_devices("GPU"))
    return None if visible is None else True


@contextlib.contextmanager
def sdk_call(what: str):
    """Turn any exception the closed-source SDK raises into one line naming what was being done."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:  # the SDK's exception types are not public
        log.debug("%s failed", what, exc_info=True)
        detail = " ".join(str(exc).split()) or "no message"
        raise PipelineError(f"{what}: {type(exc).__name__}: {detail}") from None


def open_runner(sdk, har_path=None, hw_arch: str | None = None):
    kwargs = {} if hw_arch is None else {"hw_arch": hw_arch}
    what = f"ClientRunner(hw_arch={hw_arch!r}) failed"
    if har_path is not None:
        if not Path(har_path).is_file():
            raise PipelineError(f"{har_path}: file not found")
        kwargs["har"], what = str(har_path), f"{har_path}: the Dataflow Compiler could not load the HAR"
    with sdk_call(what):
        return sdk.ClientRunner(**kwargs)


def expect_state(runner, states, har_path) -> None:
    if runner.state not in states:
        names = " or ".join(str(getattr(s, "name", s)) for s in states)
        raise PipelineError(f"{har_path}: HAR is in state {getattr(runner.state, 'name', runner.state)}, "
                            f"expected {names}; re-run the earlier stages with backend: hailo")


def save_har(runner, path) -> None:
    """`save_har` to a temporary name beside `path`, then rename: a killed stage leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".har", dir=path.parent)
    os.close(fd)
    try:
        with sdk_call(f"{path}: save_har failed"):
            runner.save_har(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --- the SDK's log -------------------------------------------------------------------------

class _Collect(logging.Handler):
    def __init__(self, level: int):
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("hailopipe", "stages")) and all(r is not record for r in self.records):
            self.records.append(record)


@contextlib.contextmanager
def sdk_records(level: int = logging.INFO):
    """Collect the records (`level` and above) logged while the SDK runs: on the root logger and on
    every existing non-propagating logger (the DFC's own console logger `hailo_sdk.client` is one:
    issue hailo_model_zoo#60 shows its `[hailo_sdk.client][INFO]` lines)."""
    handler = _Collect(level)
    loggers = [logging.getLogger()] + [layer for layer in logging.Logger.manager.loggerDict.values()
                                       if isinstance(layer, logging.Logger) and not layer.propagate]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler.records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
