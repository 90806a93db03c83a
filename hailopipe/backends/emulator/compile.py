"""The emulator's compile step: `runner.compile()` (the compiled file's bytes) + `save_har`."""

from __future__ import annotations

from hailopipe.backends import compiled_har_path
from hailopipe.fileio import write_bytes
from hailopipe.formats import ehef, har


def compile(har_path, hef_path, hw_arch: str) -> dict:
    """Write the compiled file and the compiled HAR; return the compile report."""
    src = har.load(har_path, expect_state="quantized_model")
    compiled = ehef.compile_network(src.qnet, hw_arch)
    write_bytes(hef_path, compiled)
    har.save(har.Har("compiled_model", src.net, src.qnet, src.metadata, compiled), compiled_har_path(hef_path))
    return ehef.layer_report(src.qnet)
