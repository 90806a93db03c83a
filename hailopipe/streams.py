"""What a compiled model exposes, in the shapes of HailoRT's Python API (`hailo_platform`, reference
§4): `HEF` with its query methods, the stream infos (`VStreamInfo`: name, shape without the batch,
`Format` type and order, `QuantInfo`), and `InferStream`, one stream with the format the user's
buffers have.  `hailopipe.runtime` runs the model and re-exports everything here.

    from hailopipe.streams import HEF
    hef = HEF("models/mnist.hef")                   # a path or the file's bytes
    info = hef.get_input_vstream_infos()[0]         # .name, .shape, .format.type/.order, .quant_info

Both the emulator's compiled files (`hef`) and real Hailo HEFs (`hailo_hef`, described only)
open here, as the same records; `HEF.emulated` tells them apart.
"""

from __future__ import annotations

import enum
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hailopipe import hailo_hef
from hailopipe import hef as hef_format
from hailopipe.errors import PipelineError


class HailoRTException(PipelineError):
    """Bad input to the runtime API (wrong shape, dtype, stream name, format, file)."""


class FormatType(enum.Enum):
    AUTO = 0
    UINT8 = 1
    UINT16 = 2
    FLOAT32 = 3


class FormatOrder(enum.Enum):
    """hailo_format_order_t (the ones a vstream reports)."""
    AUTO = 0
    NHWC = 1
    NHCW = 2
    FCR = 3
    F8CR = 4
    NHW = 5
    NC = 6
    BAYER_RGB = 7
    HAILO_NMS = 9
    RGB888 = 10
    NCHW = 11
    YUY2 = 12
    NV12 = 13
    NV21 = 14
    I420 = 18
    HAILO_NMS_BY_CLASS = 22


class HailoStreamInterface(enum.Enum):
    PCIe = 0
    INTEGRATED = 1
    ETH = 2
    MIPI = 3


class HailoSchedulingAlgorithm(enum.Enum):
    NONE = 0
    ROUND_ROBIN = 1


_DTYPES = {FormatType.UINT8: np.dtype(np.uint8), FormatType.UINT16: np.dtype(np.uint16),
           FormatType.FLOAT32: np.dtype(np.float32)}


@dataclass(frozen=True)
class QuantInfo:
    qp_zp: float
    qp_scale: float
    limvals_min: float
    limvals_max: float


@dataclass(frozen=True)
class Format:
    type: FormatType
    order: FormatOrder


@dataclass(frozen=True)
class VStreamInfo:
    name: str
    network_name: str
    direction: str
    format: Format
    shape: tuple
    quant_info: QuantInfo


def _vstream(s: hailo_hef.StreamInfo) -> VStreamInfo:
    q = s.quant_info
    ftype = FormatType.__members__.get(s.format_type, FormatType.AUTO)
    order = FormatOrder.__members__.get(s.order.replace(" ", "_"), FormatOrder.AUTO)
    return VStreamInfo(s.name, s.network_name, s.direction, Format(ftype, order), tuple(s.shape),
                       QuantInfo(q.qp_zp, q.qp_scale, q.limvals_min, q.limvals_max))


def _emulated_info(model: hef_format.CompiledModel, digest: str) -> hailo_hef.HailoHefInfo:
    """The emulator's compiled file described with the same records as a real HEF."""
    meta, net = model.meta, model.meta["networks"][0]

    def streams(specs, direction):
        return [hailo_hef.StreamInfo(s["name"], direction, s["format_type"], s["order"], tuple(s["shape"]),
                                     hailo_hef.QuantInfo(float(s["qp_zp"]), s["qp_scale"], s["limvals_min"],
                                                         s["limvals_max"]), net) for s in specs]

    outputs = streams(meta["outputs"], "output")
    group = hailo_hef.NetworkGroupInfo(meta["network_group"], int(meta["contexts"]), list(meta["networks"]),
                                       streams(meta["inputs"], "input"), outputs, [o.name for o in outputs])
    return hailo_hef.HailoHefInfo(model.path, hef_format.VERSION, f"sha256 {digest} (verified)",
                                  meta["hw_arch"].upper(), meta["compiler"], [group])


def _read_real_hef(buf: bytes, label: str) -> hailo_hef.HailoHefInfo:
    """hailo_hef reads files only: bytes of a real HEF go through a private temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.hef"
        path.write_bytes(buf)
        try:
            info = hailo_hef.read_hailo_hef(path)
        except hailo_hef.HefFormatError as exc:
            raise hailo_hef.HefFormatError(str(exc).replace(str(path), label)) from None
    info.path = label
    return info


class HEF:
    """A compiled model (path or bytes) with HailoRT's query methods.  `emulated` tells the
    emulator's files (which run here) from real Hailo HEFs (described only)."""

    def __init__(self, source: str | os.PathLike | bytes):
        if isinstance(source, (bytes, bytearray)):
            self.path, buf = None, bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            self.path = os.fspath(source)
            if os.path.exists(self.path) and not (os.path.isfile(self.path) or os.path.isdir(self.path)):
                raise HailoRTException(f"{self.path}: not a regular file")  # a FIFO would block the read
            buf = hef_format.read_bytes(source)
        else:
            raise HailoRTException(f"HEF: expected a file path or bytes, got {type(source).__name__}")
        label = self.path or "<bytes>"
        if hailo_hef.is_hailo_hef(buf[:4]):
            self.compiled = None
            self.info = hailo_hef.read_hailo_hef(self.path) if self.path else _read_real_hef(buf, label)
        else:
            self.compiled = hef_format.load(buf, name=label)
            self.info = _emulated_info(self.compiled, hef_format.HEADER.unpack_from(buf)[4].hex())

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
            raise hef_format.RealHefError(
                f"{self.path or '<bytes>'}: is a real Hailo HEF (for {', '.join(self.info.compatible_archs)}): running it "
                "needs a Hailo device and HailoRT (hailo_platform); `hailopipe parse-hef` can describe it")
        return self.compiled.qnet

    def _group(self, name: str | None) -> hailo_hef.NetworkGroupInfo:
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
        return [_vstream(s) for s in streams if s.direction == direction]

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


def pick_stream(streams: dict, name: str, kind: str):
    """HailoRT's `input(name="")` / `output(name="")`: the only stream, or the one named."""
    if not name and len(streams) == 1:
        return next(iter(streams.values()))
    if name not in streams:
        raise HailoRTException(f"no {kind} stream named {name!r} (has {', '.join(streams)}): give one of them")
    return streams[name]


class InferStream:
    """A stream of an InferModel (HailoRT's InferModel.InferStream): its info and the format the
    user's buffers will have."""

    def __init__(self, info: VStreamInfo):
        self.info = info
        self._type = info.format.type

    name = property(lambda self: self.info.name)
    shape = property(lambda self: self.info.shape)
    quant_infos = property(lambda self: [self.info.quant_info])
    is_nms = property(lambda self: self.info.format.order in (FormatOrder.HAILO_NMS, FormatOrder.HAILO_NMS_BY_CLASS))
    format = property(lambda self: Format(self._type, self.info.format.order))
    dtype = property(lambda self: _DTYPES[self._type])

    def set_format_type(self, type: FormatType) -> None:
        native = self.info.format.type
        t = native if type in (FormatType.AUTO, None) else type
        if t not in (native, FormatType.FLOAT32):
            raise HailoRTException(f"stream {self.name}: format type {getattr(t, 'name', t)} is not offered "
                                   f"(native {native.name} or FLOAT32)")
        self._type = t

    def set_format_order(self, order: FormatOrder) -> None:
        if order not in (FormatOrder.AUTO, self.info.format.order):
            raise HailoRTException(f"stream {self.name}: order {getattr(order, 'name', order)} is not offered "
                                   f"(the emulator gives the native {self.info.format.order.name})")

    def batch(self, x) -> np.ndarray:
        """Check and convert user data for this input stream: [N, *shape] (or one frame, *shape)."""
        x = np.asarray(x)
        if x.ndim == len(self.shape):
            x = x[None]
        if x.shape[1:] != self.shape:
            raise HailoRTException(f"input {self.name}: shape {list(x.shape)}, expected [batch, "
                                   f"{', '.join(map(str, self.shape))}]")
        if self._type != FormatType.FLOAT32:
            if x.dtype != self.dtype:
                raise HailoRTException(f"input {self.name}: dtype {x.dtype}, the raw {self._type.name} "
                                       f"stream needs {self.dtype.name}")
            return x
        if x.dtype.kind not in "fiu":
            raise HailoRTException(f"input {self.name}: dtype {x.dtype} is not numeric")
        return x.astype(np.float32, copy=False)
