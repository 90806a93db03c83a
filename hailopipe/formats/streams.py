"""The description of a compiled model, one set of types for the emulator's files and real HEFs.

HailoRT's Python API (`hailo_platform`) reports a compiled model through these records, and so does
this project, whichever file it read (`formats.ehef` or `formats.hailo_hef`):

    HefInfo           the file: target architecture, compiler version, checksum, network groups
    NetworkGroupInfo  a group: contexts, networks, input and output vstreams, host-side ops
    VStreamInfo       a stream: name `<group>/<layer>`, direction, `Format` (FormatType, FormatOrder),
                      shape without the batch ((H, W, C) for NHWC, (F,) for NC), `QuantInfo`
    StreamInfo        a device stream (hailo_stream_info_t): what crosses to the device, in the device's
                      order and hardware shape (`hailortcli parse-hef --parse-streams`)
    QuantInfo         qp_zp, qp_scale, limvals_min, limvals_max (HailoRT's hailo_quant_info_t)

`FormatType` and `FormatOrder` carry hailo_format_type_t / hailo_format_order_t's numbers (the
values a HEF's pads store), and `FormatOrder.text` is the name `hailortcli` prints.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class FormatType(enum.Enum):
    """hailo_format_type_t."""
    AUTO = 0
    UINT8 = 1
    UINT16 = 2
    FLOAT32 = 3

    @property
    def dtype(self) -> np.dtype:
        """The host buffer's dtype (AUTO has none: it means the stream's native type)."""
        return np.dtype({"UINT8": np.uint8, "UINT16": np.uint16, "FLOAT32": np.float32}[self.name])

    @classmethod
    def for_bytes(cls, data_bytes: int) -> "FormatType | None":
        """The type of a stream whose elements are `data_bytes` wide, or None."""
        return {1: cls.UINT8, 2: cls.UINT16, 4: cls.FLOAT32}.get(data_bytes)


class FormatOrder(enum.Enum):
    """hailo_format_order_t."""
    AUTO = 0
    NHWC = 1
    NHCW = 2
    FCR = 3
    F8CR = 4
    NHW = 5
    NC = 6
    BAYER_RGB = 7
    BAYER_RGB_12_BIT = 8
    HAILO_NMS = 9
    RGB888 = 10
    NCHW = 11
    YUY2 = 12
    NV12 = 13
    NV21 = 14
    HAILO_YYUV = 15
    HAILO_YYVU = 16
    RGB4 = 17
    I420 = 18
    HAILO_YYYYUV = 19
    HAILO_NMS_WITH_BYTE_MASK = 20
    HAILO_NMS_ON_CHIP = 21
    HAILO_NMS_BY_CLASS = 22
    HAILO_NMS_BY_SCORE = 23

    @property
    def text(self) -> str:
        """The order as hailortcli prints it (HailoRTCommon::get_format_order_str)."""
        return _ORDER_TEXT.get(self, self.name.replace("_", " "))

    @property
    def is_nms(self) -> bool:
        return self.name.startswith("HAILO_NMS")

    @property
    def host_layout(self) -> "FormatOrder":
        """Memory layout of the host buffer: FCR/F8CR (device transfer orders) are NHWC on the
        host, as HailoRT documents for hailo_format_order_t."""
        return FormatOrder.NHWC if self in (FormatOrder.FCR, FormatOrder.F8CR) else self


_ORDER_TEXT = {FormatOrder.BAYER_RGB_12_BIT: "12 BIT BAYER RGB", FormatOrder.RGB888: "RGB 888",
               FormatOrder.HAILO_YYUV: "YYUV", FormatOrder.HAILO_YYVU: "YYVU",
               FormatOrder.HAILO_YYYYUV: "YYYYUV"}


@dataclass(frozen=True)
class QuantInfo:
    """real = (q - qp_zp) * qp_scale on the wire; limvals: the real range a stream can carry."""
    qp_zp: float
    qp_scale: float
    limvals_min: float
    limvals_max: float


IDENTITY = QuantInfo(0.0, 1.0, 0.0, 0.0)


@dataclass(frozen=True)
class Format:
    type: FormatType
    order: FormatOrder


@dataclass(frozen=True)
class VStreamInfo:
    name: str
    network_name: str
    direction: str      # "input" / "output"
    format: Format
    shape: tuple        # without batch: (H, W, C); (C,) for NC; (H, W) for NHW
    quant_info: QuantInfo


@dataclass(frozen=True)
class StreamInfo:
    """hailo_stream_info_t as parse-hef prints it: the device order (NHCW, FCR, ...) and hw_shape (the
    padded shape the device transfers), or for an on-chip NMS stream its frame size in bytes."""
    name: str
    network_name: str
    direction: str      # "input" / "output"
    format: Format
    hw_shape: tuple     # (H, W, F) as the device transfers it
    nms_frame_size: int = 0


@dataclass
class NetworkGroupInfo:
    name: str
    contexts: int
    networks: list[str]
    inputs: list[VStreamInfo]
    outputs: list[VStreamInfo]
    sorted_outputs: list[str]
    ops: list[str] = field(default_factory=list)
    streams: list[StreamInfo] = field(default_factory=list)  # device streams, inputs first


@dataclass
class HefInfo:
    path: str
    header_version: int
    checksum: str
    hw_arch: str        # the file's own target (e.g. HAILO8P for a DFC hailo8 build, HAILO8 for ours)
    sdk_version: str
    network_groups: list[NetworkGroupInfo]
    compatible_archs: list[str]  # device architectures HailoRT accepts it on (what parse-hef prints)
    emulated: bool = False
    format_version: int = 0      # ProtoHEFHeader.version (HailoRT reads extensions only when > 0)
    extensions: list[tuple[int, str]] = field(default_factory=list)           # required: (type_index, name)
    optional_extensions: list[tuple[int, str]] = field(default_factory=list)  # HailoRT ignores unknown ones
