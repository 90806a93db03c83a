"""Any compiled file, as `hailortcli parse-hef` shows it: the emulator's (`ehef`) or a real HEF (`hailo_hef`).

    from hailopipe.formats import parse_hef
    info, compiled = parse_hef.read("models/mnist.hef")   # a path or bytes; compiled is None for a real HEF
    print(parse_hef.describe(info))

`read` tells the two apart by their magic (`\\x01HEF` real, `EHEF` emulated) and describes both
with the same records (`streams.HefInfo`); an emulated file also comes back as the
`ehef.CompiledModel` the engine runs.  `describe` renders it as `hailortcli parse-hef` does, in
the text of the HailoRT generation that serves the HEF's architecture (`hailort_style`): HailoRT
4.x (branch hailo8, for Hailo-8/8R/8L) prints `Architecture HEF was compiled for: ...`, HailoRT 5.x
(Hailo-10/15) `HEF Compatible for: ...` and `HEF Compiler Version: ...` (hef.cpp,
`Hef::Impl::get_description`); `streams=True` adds the `Stream infos:` block of `hailortcli
parse-hef --parse-streams` before each network's vstreams; `quantization=True` adds a line per
vstream.  `to_json` gives the description as plain JSON types.

Device streams of an emulated file: on a Hailo device a stream carries the device's own order and
padded shape (NHCW, FCR, ...), which HailoRT reorders to the vstream's host layout.  The emulator has
no such transfer: its engine reads and writes the vstream's raw integers as they are, so the
emulated file's streams are its vstreams, same name, type, order and shape (`emulated_streams`).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import struct

from hailopipe.formats import ehef, hailo_hef
from hailopipe.formats.streams import FormatOrder, HefInfo, StreamInfo, VStreamInfo


def read(source: str | os.PathLike | bytes, name: str | None = None) -> tuple[HefInfo, ehef.CompiledModel | None]:
    """(description, the emulated model or None for a real HEF) of a compiled file (a path or its bytes)."""
    buf = bytes(source) if isinstance(source, (bytes, bytearray)) else ehef.read_bytes(source)
    label = name or ("<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source))
    if hailo_hef.is_hailo_hef(buf):
        return hailo_hef.read(buf, name=label), None
    compiled = ehef.load(buf, name=label)
    for group in compiled.info.network_groups:
        group.streams = group.streams or emulated_streams(group.inputs + group.outputs)
    return compiled.info, compiled


def emulated_streams(vstreams: list[VStreamInfo]) -> list[StreamInfo]:
    """An emulated file's device streams: its vstreams as they are (see the module docstring)."""
    def hw(shape):  # hw_shape is always (H, W, F): NC is (1, 1, F), NHW (H, W, 1)
        shape = tuple(int(d) for d in shape)
        return (1, 1) + shape if len(shape) == 1 else shape + (1,) if len(shape) == 2 else shape

    return [StreamInfo(s.name, s.network_name, s.direction, s.format, hw(s.shape)) for s in vstreams]


def _num(x: float) -> str:
    """Shortest text that reads back as the same float32 (HEF quant values are float32); a whole
    number as an integer (a zero point of 120 is `120`, not `1.2e+02`)."""
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    if float(x).is_integer() and abs(x) < 1e16:
        return str(int(x))
    target = struct.pack("<f", x)
    for digits in range(1, 10):
        text = f"{x:.{digits}g}"
        if struct.pack("<f", float(text)) == target:
            return text
    return repr(x)


def _shape_text(s: VStreamInfo) -> str:
    if s.format.order == FormatOrder.HAILO_NMS_BY_CLASS and len(s.shape) == 3:
        classes, _, per_class = s.shape
        frame = classes * (1 + 5 * per_class) * 4
        return (f"(number of classes: {classes}, maximum bounding boxes per class: {per_class}, "
                f"maximum frame size: {frame})")
    return "(" + "x".join(str(d) for d in s.shape) + ")"


def _stream_text(s: StreamInfo) -> str:
    """get_shape_str(hailo_stream_info_t) of hef.cpp: type, device order, hw_shape."""
    head = f"{s.format.type.name}, {s.format.order.text}"
    if s.format.order == FormatOrder.HAILO_NMS_ON_CHIP:
        return f"{head}(maximum frame size: {s.nms_frame_size})"
    shape = {FormatOrder.NC: s.hw_shape[2:], FormatOrder.NHW: s.hw_shape[:2]}.get(s.format.order, s.hw_shape)
    return head + "(" + "x".join(str(d) for d in shape) + ")"


STYLES = ("hailort4", "hailort5")


def hailort_style(info: HefInfo) -> str:
    """The HailoRT generation that serves the HEF's devices: 4.x for the Hailo-8 family, 5.x else."""
    return "hailort4" if all(a.startswith("HAILO8") for a in info.compatible_archs) else "hailort5"


def describe(info: HefInfo, *, style: str | None = None, streams: bool = False, quantization: bool = False) -> str:
    """What `hailortcli parse-hef` prints (vstream infos), in `style` (default `hailort_style`):
    "hailort4" prints "Architecture HEF was compiled for: ...", "hailort5" "HEF Compatible for: ..."
    and "HEF Compiler Version: ...".  `streams`: also the stream infos (`--parse-streams`).  With
    `quantization`, a line of qparams under each vstream."""
    style = style or hailort_style(info)
    if style not in STYLES:
        raise ValueError(f"describe: unknown style {style!r} (hailort4 or hailort5)")
    tab = "    "
    if style == "hailort4":
        lines = [f"Architecture HEF was compiled for: {info.compatible_archs[0]}"]
    else:
        lines = [f"HEF Compatible for: {', '.join(info.compatible_archs)}"]
        if info.sdk_version:
            lines.append(f"HEF Compiler Version: {info.sdk_version}")
    for g in info.network_groups:
        ctx = f"Multi Context - Number of contexts: {g.contexts}" if g.contexts > 1 else "Single Context"
        lines.append(f"Network group name: {g.name}, {ctx}")
        for net in g.networks:
            lines.append(f"{tab}Network name: {net}")
            if streams:
                lines.append(f"{tab * 2}Stream infos:")
                lines += [f"{tab * 3}{'Input ' if s.direction == 'input' else 'Output'} {s.name} {_stream_text(s)}"
                          for s in g.streams if not s.network_name or s.network_name == net]
            lines.append(f"{tab * 2}VStream infos:")
            for s in g.inputs + g.outputs:
                if s.network_name and s.network_name != net:
                    continue
                label = "Input " if s.direction == "input" else "Output"
                q = s.quant_info
                lines.append(f"{tab * 3}{label} {s.name} {s.format.type.name}, {s.format.order.text}{_shape_text(s)}")
                if quantization:
                    lines.append(f"{tab * 4}Quantization: qp_scale={_num(q.qp_scale)}, qp_zp={_num(q.qp_zp)}, "
                                 f"limvals=[{_num(q.limvals_min)}, {_num(q.limvals_max)}]")
            if g.ops:
                lines.append(f"{tab * 3}Operation:")
                lines += [f"{tab * 4}{op}" for op in g.ops]
    return "\n".join(lines) + "\n"


def _plain(obj):
    """dataclasses.asdict's output with every enum as hailortcli names it, for JSON."""
    if isinstance(obj, dict):
        if set(obj) == {"type", "order"}:  # a Format
            return {"format_type": obj["type"].name, "order": obj["order"].text}
        out = {}
        for k, v in obj.items():
            out.update(_plain(v) if k == "format" else {k: _plain(v)})
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj.name if isinstance(obj, enum.Enum) else obj


def to_json(info: HefInfo) -> dict:
    """`info` as JSON types: streams with `format_type` and `order` (hailortcli's names) beside the rest."""
    return _plain(dataclasses.asdict(info))
