"""Read real HEF files (Hailo Executable Format, made by Hailo's Dataflow Compiler) without HailoRT.

`read(path or bytes)` checks the file header and its checksum, decodes the protobuf body and
returns a `streams.HefInfo` (the records HailoRT reports, shared with the emulator's files):
target architecture, compiler version, and for each network group its contexts, networks,
input/output vstreams (name, format type, order, shape without batch, quantization) and host-side
ops.  Every problem (missing, oversized, truncated or corrupt file, bad magic/version/checksum,
undecodable body) raises `HefFormatError` with a one-line message that starts with the file name.

Run:  python -m hailopipe.formats.hailo_hef FILE.hef     (prints parse_hef.describe())

File layout (all header integers big-endian, packed; facts of the format as HailoRT reads it):

    common  magic u32 = 0x01484546 ("\\x01HEF"), version u32, proto_size u32            12 bytes
    v0      reserved u32, md5[16] of the body; file = header + body exactly            32 bytes
    v1      crc32 u32 (zlib CRC-32 of everything after the header), ccws_size u64,
            reserved u32; file = header + body + ccws exactly                          28 bytes
    v2      xxh3_64 u64 (of everything after the header), ccws_size u64, 2 x reserved u64;
            file = header + body + ccws exactly                                       44 bytes
    v3      xxh3_64 u64, ccws_size_with_padding u64, hef_padding_size u32,
            additional_info_size u64, proto_xxh3_64 u64, reserved u64.  If proto_xxh3_64 is
            non-zero only the body is hashed; otherwise everything after the header, and then
            file = header + body + ccws_with_padding + additional_info exactly          56 bytes
    The body (proto_size bytes right after the header) is a protobuf `ProtoHEFHef`.  XXH3-64 is
    computed by the `xxhash` package (the reference C library's Python binding).

The protobuf fields read, and the tables that name their enum values, are in `hef_schema`.

Vstreams are the boundary edge layers of all contexts (mux layers expand to their
predecessors); outputs are sorted by sorted_outputs_order, as HailoRT does.  `order` is the
vstream order HailoRT reports, derived from EdgeLayerBase.format: device orders NHWC/NHCW/RGB888
give NHWC, FCR and F8CR stay FCR/F8CR (their host buffers are still NHWC: `FormatOrder.host_layout`).

Device streams (`NetworkGroupInfo.streams`, what `hailortcli parse-hef --parse-streams` prints) are
the same boundary edge layers as HailoRT's LayerInfoUtils::get_stream_infos_from_layer_info makes
them (hef.cpp fill_layer_info / fill_mux_info / fill_planes_info): one per info layer, per mux
(not its predecessors) and per plane, in context order; order = the device order
(`hef_schema.DEVICE_ORDER`), shape = hw_shape: the padded dims, or the plain dims when HailoRT
pads on the device itself (HefConfigurator::is_core_hw_padding_supported: an NHCW boundary layer
that is not part of a mux, HEF without the HW_PADDING optional extension, core_buffers_per_frame
== height, width*features a multiple of 8 and its bytes below the periph limit).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import sys
import zlib

import xxhash

from hailopipe.errors import PipelineError
from hailopipe.fileio import read_limited
from hailopipe.formats.streams import (
    IDENTITY,
    Format,
    FormatOrder,
    FormatType,
    HefInfo,
    NetworkGroupInfo,
    QuantInfo,
    StreamInfo,
    VStreamInfo,
)

log = logging.getLogger(__name__)

MAGIC = b"\x01HEF"  # 0x01484546 as a big-endian u32
MAX_HEF_BYTES = 512 << 20  # refuse larger files before reading them
_COMMON = struct.Struct(">III")
_HEADER_SIZES = {0: 32, 1: 28, 2: 44, 3: 56}


# Device architectures a HEF arch runs on (what "HEF Compatible for:" prints).
COMPATIBLE = {"HAILO8": ["HAILO8"], "HAILO8P": ["HAILO8"], "HAILO8R": ["HAILO8"],
              "SAGE_B0": ["HAILO8"], "PAPRIKA_B0": ["HAILO8"], "SAGE_A0": ["HAILO8_A0"],
              "HAILO8L": ["HAILO8L", "HAILO8"], "HAILO15H": ["HAILO15H", "HAILO10H"],
              "GINGER": ["HAILO15H", "HAILO10H"], "LAVENDER": ["HAILO15H", "HAILO10H"],
              "HAILO15M": ["HAILO15M", "HAILO15H", "HAILO10H"], "HAILO15L": ["HAILO15L"],
              "PLUTO": ["HAILO15L"], "HAILO10H": ["HAILO10H"], "MARS": ["HAILO12L"]}


class HefFormatError(PipelineError, ValueError):
    """A file is not a readable HEF; the message is one line: '<file>: <what is wrong>'."""


def is_hailo_hef(head: bytes) -> bool:
    """True if `head` (the first bytes of a file) starts with the HEF magic."""
    return bytes(head[:4]) == MAGIC


# --- header ---------------------------------------------------------------------------------

def _check_header(path: str, data: bytes) -> tuple[int, bytes, str]:
    """Validate header, sizes and checksum; return (version, protobuf body, checksum text)."""
    if not data:
        raise HefFormatError(f"{path}: file is empty")
    if len(data) < 4 or not is_hailo_hef(data):
        raise HefFormatError(f"{path}: not a HEF (magic {data[:4].hex() or 'missing'}, "
                             f"expected {MAGIC.hex()})")
    if len(data) < _COMMON.size:
        raise HefFormatError(f"{path}: truncated header ({len(data)} bytes)")
    _, version, proto_size = _COMMON.unpack_from(data)
    if version not in _HEADER_SIZES:
        raise HefFormatError(f"{path}: unsupported HEF header version {version} (known: 0-3)")
    hsize = _HEADER_SIZES[version]
    if len(data) < hsize:
        raise HefFormatError(f"{path}: truncated v{version} header ({len(data)} of {hsize} bytes)")
    rest = memoryview(data)[hsize:]
    # `extra`: bytes declared after the body (ccws, padding, additional info); `exact`: the file
    # must end right after them (HailoRT's "file length does not match" check).
    exact = True
    if version == 0:
        extra = 0
    elif version == 1:
        crc, extra = struct.unpack_from(">IQ", data, 12)
    elif version == 2:
        xxh, extra = struct.unpack_from(">QQ", data, 12)
    else:
        xxh, ccws, padding, info_size, proto_xxh = struct.unpack_from(">QQIQQ", data, 12)
        if padding > ccws:
            raise HefFormatError(f"{path}: v3 header padding ({padding}) exceeds ccws size ({ccws})")
        extra, exact = ccws + info_size, proto_xxh == 0
    declared = proto_size + extra
    if len(rest) < declared:
        more = f" + {extra} more bytes" if extra else ""
        raise HefFormatError(f"{path}: truncated: header declares a {proto_size}-byte body{more}"
                             f" but only {len(rest)} bytes follow the {hsize}-byte header")
    if exact and len(rest) != declared:
        raise HefFormatError(f"{path}: {len(rest) - declared} unexpected bytes after the declared "
                             f"{declared} bytes (file length does not match the header)")
    body = bytes(rest[:proto_size])
    if version == 0:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        if digest != data[16:32]:
            raise HefFormatError(f"{path}: MD5 mismatch (header {data[16:32].hex()}, body "
                                 f"{digest.hex()}): file is corrupt")
        return version, body, f"md5 {digest.hex()} (verified)"
    if version == 1:
        calc = zlib.crc32(rest) & 0xFFFFFFFF
        if calc != crc:
            raise HefFormatError(f"{path}: CRC32 mismatch (header {crc:08x}, computed {calc:08x}): "
                                 "file is corrupt")
        return version, body, f"crc32 {calc:08x} (verified)"
    what, covered, expected = "xxh3_64", rest, xxh
    if version == 3 and proto_xxh:
        what, covered, expected = "xxh3_64 of body", body, proto_xxh
    calc = xxhash.xxh3_64_intdigest(bytes(covered))
    if calc != expected:
        raise HefFormatError(f"{path}: {what} mismatch (header {expected:016x}, computed "
                             f"{calc:016x}): file is corrupt")
    return version, body, f"{what} {calc:016x} (verified)"


# --- body -----------------------------------------------------------------------------------

def _quant(numeric) -> QuantInfo:
    return QuantInfo(numeric.qp_zp, numeric.qp_scale, numeric.limvals_min, numeric.limvals_max)


def _format_type(data_bytes: int) -> FormatType:
    ftype = FormatType.for_bytes(data_bytes)
    if ftype is None:
        log.warning("edge layer with data_bytes=%d: format type unknown, reported as AUTO", data_bytes)
        return FormatType.AUTO
    return ftype


def _enum(kind, table: dict, code: int, what: str):
    """table[code], or AUTO with a warning for a code this reader does not know."""
    if code in table:
        return table[code]
    log.warning("%s code %d unknown, reported as AUTO", what, code)
    return kind.AUTO


def _stream(name, direction, ftype, order, shape, quant, network) -> VStreamInfo:
    return VStreamInfo(name, network, direction, Format(ftype, order), tuple(shape), quant)


def _layer_stream(info, direction: str, network: str, transposed_net: bool) -> VStreamInfo:
    base = info.edge_layer_base
    order = _enum(FormatOrder, schema().HOST_ORDER, base.format, "edge layer format")
    if order == FormatOrder.HAILO_NMS_BY_CLASS:
        nms = base.additional_info.nms_info
        per_class = nms.max_output_size * max(nms.input_division_factor, 1)
        return _stream(info.name, direction, FormatType.FLOAT32, order,
                       (nms.number_of_classes, 5, per_class), _quant(info.numeric_info), network)
    h, w, c = base.height, base.width, base.features
    if (transposed_net or info.transposed) and order != FormatOrder.NC:
        h, w = w, h
    shape = {FormatOrder.NC: (c,), FormatOrder.NHW: (h, w)}.get(order, (h, w, c))
    return _stream(info.name, direction, _format_type(base.data_bytes), order, shape,
                   _quant(info.numeric_info), network)


# --- device streams (hailo_stream_info_t) -------------------------------------------------------

NMS_OUTPUT_BURST, HW_PADDING = 19, 11  # ProtoHEFExtensionType values
HAILO8_PERIPH_BYTES, HAILO1X_PERIPH_BYTES = 0x10000, 0x2000  # hw_consts.hpp (..._INBOUND_DATA_STREAM_SIZE,
#                                                               HAILO1X_PERIPH_BYTES_PER_BUFFER_MAX_SIZE)


def _features(hef, hw_arch: str) -> dict:
    """The SupportedFeatures parse-hef's stream infos depend on (hef.cpp get_supported_features)."""
    versioned = hef.header.version > 0  # older HEFs carry no extensions (ProtoHEFIncludedFeatures)
    return {"nms_burst": versioned and any(e.type_index == NMS_OUTPUT_BURST for e in hef.extensions),
            "hw_padding_in_dfc": versioned and any(e.type_index == HW_PADDING for e in hef.optional_extensions),
            "max_periph": HAILO8_PERIPH_BYTES if hw_arch.startswith("HAILO8") else HAILO1X_PERIPH_BYTES}


def _device_stream(name: str, base, direction: str, network: str, features: dict, may_pad: bool) -> StreamInfo:
    order = _enum(FormatOrder, schema().DEVICE_ORDER, base.format, "edge layer format")
    fmt = Format(_format_type(base.data_bytes), order)
    if order == FormatOrder.HAILO_NMS_ON_CHIP:  # HailoRTCommon::get_nms_hw_frame_size
        nms = base.additional_info.nms_info
        burst = nms.burst_size if features["nms_burst"] else 1  # DEFAULT_NMS_NO_BURST_SIZE
        per_class = 2 + nms.bbox_size * max(burst, nms.max_output_size)  # u16 bbox counter + bboxes
        size = max(nms.input_division_factor, 1) * nms.number_of_classes * per_class + nms.bbox_size * burst
        return StreamInfo(name, network, direction, fmt, (), int(size))
    limit = min(features["max_periph"], base.max_shmifo_size or features["max_periph"])
    row = base.width * base.features
    device_pads = (may_pad and not features["hw_padding_in_dfc"] and order == FormatOrder.NHCW
                   and base.core_buffers_per_frame == base.height and row % 8 == 0
                   and row * base.data_bytes <= limit - 1)
    shape = ((base.height, base.width, base.features) if device_pads
             else (base.padded_height, base.padded_width, base.padded_features))
    return StreamInfo(name, network, direction, fmt, shape)


def _edge_device_streams(edge, direction: str, network: str, features: dict) -> list[StreamInfo]:
    if edge.HasField("layer_mux"):
        return [_device_stream(edge.layer_mux.name, edge.layer_mux.edge_layer_base, direction, network,
                               features, False)]
    if edge.HasField("layer_planes"):
        return [_device_stream(p.layer_info.name, p.layer_info.edge_layer_base, direction, network, features, True)
                for p in edge.layer_planes.planes if p.HasField("layer_info")]
    if edge.HasField("layer_info"):
        info = edge.layer_info
        return [_device_stream(info.name, info.edge_layer_base, direction, network, features, True)]
    return []


def _edge_streams(edge, direction: str, network: str, transposed_net: bool) -> list[VStreamInfo]:
    """Vstreams of a layer_info / layer_mux / layer_planes edge (mux expands to predecessors)."""
    if edge.HasField("layer_mux"):
        return [s for pred in edge.layer_mux.predecessors
                for s in _edge_streams(pred, direction, network, transposed_net)]
    if edge.HasField("layer_planes"):
        planes = edge.layer_planes
        ftype = FormatType.UINT8
        if planes.planes and planes.planes[0].HasField("layer_info"):
            ftype = _format_type(planes.planes[0].layer_info.edge_layer_base.data_bytes)
        q = planes.planes[0].layer_info.numeric_info if planes.planes else None
        return [_stream(planes.name, direction, ftype,
                        _enum(FormatOrder, schema().PLANES, planes.planes_format, "planes format"),
                        (planes.height, planes.width, planes.features),
                        _quant(q) if q is not None else IDENTITY, network)]
    if edge.HasField("layer_info"):
        return [_layer_stream(edge.layer_info, direction, network, transposed_net)]
    return []


def _core_part(ng):
    """The device part of a network group: ops[i].core_op (newer) or the group itself (older),
    descending into the first partial core op / network group if the top one has no contexts."""
    core = next((op.core_op for op in ng.ops if op.HasField("core_op")), ng)
    partials = core.partial_core_ops if hasattr(core, "partial_core_ops") else core.partial_network_groups
    if not core.contexts and partials:
        first = partials[0]
        core = first.core_op if hasattr(first, "core_op") else first.network_group
    return core


def _host_op(op, pad_to_stream: dict, pad_edges: dict, network: str):
    """Describe a host-side op; return (text, consumed output names, new output streams)."""
    srcs = [pad_to_stream.get(pad_edges.get(p.index)) for p in op.input_pads]
    consumed = [s.name for s in srcs if s is not None]
    if op.HasField("logits_op"):
        kind = {0: "ARGMAX", 1: "SOFTMAX"}.get(op.logits_op.logits_type, "LOGITS?")
        outs = []
        if srcs and srcs[0] is not None and op.output_pads:
            src, pad = srcs[0], op.output_pads[0]
            shape = src.shape[:2] + (1,) if kind == "ARGMAX" and len(src.shape) == 3 else src.shape
            order = _enum(FormatOrder, {o.value: o for o in FormatOrder}, pad.format_order, "pad format order")
            ftype = _enum(FormatType, {t.value: t for t in FormatType}, pad.format_type, "pad format type")
            outs.append(_stream(pad.name, "output", ftype, order, shape, _quant(pad.numeric_info), network))
        text = f"{op.name}: {kind} on host, {', '.join(consumed) or '?'} -> " + \
               ", ".join(p.name for p in op.output_pads)
        return text, consumed, outs
    if op.HasField("nms_op"):
        nms = op.nms_op
        kind = next((v for k, v in schema().NMS_KINDS.items() if nms.HasField(k)), "NMS")
        outs = [_stream(p.name, "output", FormatType.FLOAT32, FormatOrder.HAILO_NMS_BY_CLASS,
                        (nms.classes, 5, nms.max_proposals_per_class), IDENTITY, network)
                for p in op.output_pads[:1]]
        text = (f"{op.name}: {kind}{' bbox decoding' if nms.bbox_decoding_only else ''} NMS on host, "
                f"classes: {nms.classes}, max proposals per class: {nms.max_proposals_per_class}, "
                f"score threshold: {nms.nms_score_th:g}, IoU threshold: {nms.nms_iou_th:g}")
        return text, consumed, outs
    return f"{op.name}: unknown op", [], []


def _network_group(ng, features: dict) -> NetworkGroupInfo:
    core = _core_part(ng)
    name = (ng.network_group_metadata.network_group_name or ng.network_group_name
            or core.network_group_metadata.network_group_name)
    partial_names = list(core.networks_names)
    networks = [f"{name}/{n}" for n in partial_names] or [f"{name}/{name}"]
    transposed = core.network_group_metadata.transposed_net
    inputs, outputs, pad_to_stream, seen = [], [], {}, set()
    device_streams = {"input": [], "output": []}
    for ctx in core.contexts:
        for edge in ctx.metadata.edge_layers:
            if edge.context_switch_info.edge_connection_type != 0:  # not a boundary (host) edge
                continue
            idx = edge.network_index if edge.network_index < len(networks) else 0
            direction = "output" if edge.direction == 1 else "input"
            streams = _edge_streams(edge, direction, networks[idx], transposed)
            device_streams[direction] += _edge_device_streams(edge, direction, networks[idx], features)
            for s in streams:
                if s.name not in seen:
                    seen.add(s.name)
                    (outputs if direction == "output" else inputs).append(s)
            if direction == "output" and edge.HasField("pad_index") and streams:
                pad_to_stream[edge.pad_index] = streams[0]
    pad_edges = {e.dst: e.src for e in ng.pad_edges}
    ops = []
    for op in ng.ops:
        if op.HasField("core_op"):
            continue
        text, consumed, new = _host_op(op, pad_to_stream, pad_edges, networks[0])
        ops.append(text)
        outputs = [s for s in outputs if s.name not in consumed] + new
    fused = core.fused_layers_metadata
    sorted_outputs = list(fused.updated_sorted_output_names if fused.network_has_fused_layers
                          else core.sorted_outputs_order)
    rank = {n: i for i, n in enumerate(sorted_outputs)}
    outputs.sort(key=lambda s: rank.get(s.name, len(rank)))
    return NetworkGroupInfo(name, len(core.contexts), networks, inputs, outputs, sorted_outputs, ops,
                            device_streams["input"] + device_streams["output"])


def read(source: str | os.PathLike | bytes, *, name: str | None = None, max_bytes: int = MAX_HEF_BYTES) -> HefInfo:
    """Read and check a HEF (a path or its bytes); HefFormatError, naming the file, on any problem."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, data = name or "<bytes>", bytes(source)
        if len(data) > max_bytes:
            raise HefFormatError(f"{label}: file is {len(data)} bytes, more than the {max_bytes}-byte limit")
    elif isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        data = read_limited(source, max_bytes, "HEF file", error=HefFormatError)
    else:
        raise HefFormatError(f"{source!r}: not a file path or bytes")
    version, body, checksum = _check_header(label, data)
    from google.protobuf.message import DecodeError

    hef = schema().MESSAGES["Hef"]()
    try:
        hef.ParseFromString(body)
    except DecodeError as exc:
        raise HefFormatError(f"{label}: protobuf body does not decode ({exc})") from exc
    except Exception as exc:  # the C parser may raise other types on hostile input
        raise HefFormatError(f"{label}: protobuf body does not decode ({type(exc).__name__}: {exc})") from exc
    if not hef.HasField("header"):
        raise HefFormatError(f"{label}: protobuf body has no HEF header message")
    arch_id = hef.header.hw_arch
    hw_arch = schema().HW_ARCHS.get(arch_id, f"UNKNOWN({arch_id})")
    sdk = hef.header.sdk_version_str
    if not sdk and hef.header.HasField("sdk_version"):
        v = hef.header.sdk_version
        sdk = f"{v.major}.{v.minor}.{v.revision}"
    groups = [_network_group(ng, _features(hef, hw_arch)) for ng in hef.network_groups]
    if not groups:
        raise HefFormatError(f"{label}: HEF has no network groups")
    for g in groups:
        if not g.inputs or not g.outputs:
            log.warning("%s: network group %s has %d inputs and %d outputs", label, g.name,
                        len(g.inputs), len(g.outputs))
    log.debug("%s: HEF v%d, %s, %s, DFC %s, %d network group(s)", label, version, checksum,
              hw_arch, sdk or "?", len(groups))
    return HefInfo(label, version, checksum, hw_arch, sdk, groups, COMPATIBLE.get(hw_arch, [hw_arch]),
                   format_version=hef.header.version,
                   extensions=[(e.type_index, e.name) for e in hef.extensions],
                   optional_extensions=[(e.type_index, e.name) for e in hef.optional_extensions])


def schema():
    """The protobuf schema module, imported on first use (the magic check needs no protobuf)."""
    from hailopipe.formats import hef_schema

    return hef_schema


def main(argv: list[str] | None = None) -> None:
    from hailopipe.formats.parse_hef import describe

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        raise PipelineError("usage: python -m hailopipe.formats.hailo_hef FILE.hef")
    info = read(args[0])
    log.info("%s: header v%d, %s", info.path, info.header_version, info.checksum)
    print(describe(info), end="")


if __name__ == "__main__":
    from hailopipe.errors import run_main

    run_main(main)
