"""`HEF`: a compiled model's queries, as HailoRT's `hailo_platform.HEF` offers them.

    hef = HEF("models/mnist.hef")                   # a path or the file's bytes
    info = hef.get_input_vstream_infos()[0]         # .name, .shape (no batch), .format.type/.order, .quant_info

Both the emulator's compiled files and real Hailo HEFs open here (`formats.parse_hef`), described
with the same records (`formats.streams`); `HEF.emulated` tells them apart, and only the
emulator's run here (`HEF.qnet`).
"""

from __future__ import annotations

import os

from hailopipe.errors import PipelineError
from hailopipe.formats import parse_hef
from hailopipe.formats.ehef import RealHefError
from hailopipe.formats.streams import NetworkGroupInfo, VStreamInfo


class HailoRTException(PipelineError):
    """Bad input to the runtime API (wrong shape, dtype, stream name, format, file).  A refusal that
    HailoRT reports with a status carries it: `status` (e.g. "HAILO_INVALID_HEF") and `status_code` (26)."""

    status: str = ""
    status_code: int | None = None


class HailoRTInvalidHEFException(HailoRTException):
    """HAILO_INVALID_HEF(26), under hailo_platform's name for it."""


class HailoRTHEFNotCompatibleWithDevice(HailoRTException):
    """HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93) (HailoRT 4.21+), under hailo_platform's name for it."""


def status_exception(message: str, status: str, code: int | None) -> HailoRTException:
    """The exception hailo_platform raises for `status` (pyhailort.py ExceptionWrapper), carrying it."""
    kind = {"HAILO_INVALID_HEF": HailoRTInvalidHEFException,
            "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE": HailoRTHEFNotCompatibleWithDevice}.get(status, HailoRTException)
    exc = kind(message)
    exc.status, exc.status_code = status, code
    return exc


class HEF:
    """A compiled model (path or bytes) with HailoRT's query methods.  `emulated` tells the
    emulator's files (which run here) from real Hailo HEFs (described only)."""

    def __init__(self, source: str | os.PathLike | bytes):
        if isinstance(source, (bytes, bytearray)):
            self.path = None
        elif isinstance(source, (str, os.PathLike)):
            self.path = os.fspath(source)
        else:
            raise HailoRTException(f"HEF: expected a file path or bytes, got {type(source).__name__}")
        self.info, self.compiled = parse_hef.read(source, name=self.path or "<bytes>")

    @property
    def emulated(self) -> bool:
        return self.compiled is not None

    @property
    def hw_arch(self) -> str:
        """The target as the file records it (`hailo8` for the emulator's, `HAILO8P` for a real HEF)."""
        return self.compiled.meta["hw_arch"] if self.compiled else self.info.hw_arch

    @property
    def qnet(self):
        if self.compiled is None:
            raise RealHefError(
                f"{self.path or '<bytes>'}: is a real Hailo HEF (for {', '.join(self.info.compatible_archs)}): "
                "running it "
                "needs a Hailo device and HailoRT (hailo_platform); `hailopipe parse-hef` can describe it")
        return self.compiled.qnet

    def _group(self, name: str | None) -> NetworkGroupInfo:
        for g in self.info.network_groups:
            if name in (None, g.name):
                return g
        raise HailoRTException(f"{self.path or '<bytes>'}: no network group named {name!r} "
                               f"(has {', '.join(g.name for g in self.info.network_groups)})")

    def _vstreams(self, direction: str, name: str | None) -> list[VStreamInfo]:
        """Streams of the first group (name None), of a group, or of one network."""
        for g in self.info.network_groups:
            if name in g.networks:
                streams = [s for s in g.inputs + g.outputs if s.network_name == name]
                break
        else:
            g = self._group(name)
            streams = g.inputs + g.outputs
        return [s for s in streams if s.direction == direction]

    def get_network_group_names(self) -> list[str]:
        return [g.name for g in self.info.network_groups]

    def get_networks_names(self, network_group_name: str | None = None) -> list[str]:
        return list(self._group(network_group_name).networks)

    def get_input_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return self._vstreams("input", name)

    def get_output_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return self._vstreams("output", name)

    def get_all_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return self.get_input_vstream_infos(name) + self.get_output_vstream_infos(name)

    def get_sorted_output_names(self, network_group_name: str | None = None) -> list[str]:
        g = self._group(network_group_name)
        return list(g.sorted_outputs) or [s.name for s in g.outputs]
