"""The emulator's compiled file (the HEF step): everything the runtime needs, without the HAR.

Layout (big-endian header, like Hailo's, but with its own magic so it never passes for a HEF that
a Hailo device could load):

    offset  size  field
    0       4     magic  b"EHEF"  (Hailo's is 01 48 45 46 = "\\x01HEF")
    4       4     format version (1)
    8       4     flags: bit 0 = emulated (always set)
    12      8     body size in bytes
    20      32    sha256 of the body
    52      ...   body: u32 JSON length, JSON description, zero padding to a 64-byte boundary
                  (from the body start), then the arrays, each 64-byte aligned

The JSON holds the target `hw_arch`, the network group and network names, the input and output
stream infos as HailoRT reports them (name `<group>/<layer>`, shape without batch, order, format
type UINT8/UINT16, qp_scale, qp_zp, limvals), the compile report, and per layer its activation, bit
widths, scales and an index of its arrays (offset, dtype, shape).  The arrays are the quantized
params under the same keys as the HAR's .q.npz.  `load` verifies magic, version, flags, sizes and
the checksum before it trusts a byte, and rebuilds the QNetwork through the same checks as a HAR.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass

import numpy as np

from hailopipe import EMULATOR
from hailopipe.errors import PipelineError
from hailopipe.fileio import read_limited
from hailopipe.formats import compile_report, qnpz
from hailopipe.formats.hailo_hef import COMPATIBLE, is_hailo_hef
from hailopipe.formats.streams import Format, FormatOrder, FormatType, HefInfo, NetworkGroupInfo, QuantInfo, VStreamInfo
from hailopipe.network import ACTIVATIONS, Conv, Dense, Network, Normalization, Pool
from hailopipe.quantization import arithmetic
from hailopipe.quantization.qnetwork import QConv, QDense, QNetwork, QPool

MAGIC = b"EHEF"
VERSION = 1
FLAG_EMULATED = 1
HEADER = struct.Struct(">4sIIQ32s")
ALIGN = 64
MAX_BYTES = 1 << 31
DTYPES = ("|i1", "<i2", "<i4", "<i8", "<f4", "|u1")


class RealHefError(PipelineError):
    """The file is a real HEF made by Hailo's compiler: it runs only on a Hailo device through HailoRT."""


@dataclass
class CompiledModel:
    path: str
    meta: dict
    qnet: QNetwork
    info: HefInfo  # what parse-hef shows, in the records real HEFs are described with

    @property
    def report(self) -> dict:
        return self.meta["report"]


def _stream(q: QNetwork, name: str, direction: str, shape, order: FormatOrder, bits: int, scale: float, zp: int,
            limvals) -> VStreamInfo:
    qmin, _ = arithmetic.qrange(bits)
    ftype = FormatType.UINT8 if bits <= 8 else FormatType.UINT16
    return VStreamInfo(f"{q.name}/{name}", f"{q.name}/{q.name}", direction, Format(ftype, order),
                       tuple(int(s) for s in shape),
                       QuantInfo(float(zp - qmin), float(scale), float(limvals[0]), float(limvals[1])))


def stream_infos(q: QNetwork) -> tuple[list[VStreamInfo], list[VStreamInfo]]:
    """The input and output vstreams of `q`: raw unsigned integers with the network's qparams."""
    out = q.output
    inputs = [_stream(q, "input_layer1", "input", q.input_shape, FormatOrder.NHWC, q.input_bits, q.input_scale,
                      q.input_zp, q.input_limvals)]
    if isinstance(out, QDense):
        shape, order, bits = (out.kernel.shape[1],), FormatOrder.NC, out.out_bits
    else:  # a network ending in a conv or pool layer: an NHWC output, as the real MNIST HEF's maxpool3
        shape, order, bits = out.out_shape, FormatOrder.NHWC, (out.bits if isinstance(out, QPool) else out.out_bits)
    outputs = [_stream(q, out.name, "output", shape, order, bits, out.out_scale, out.out_zp,
                       arithmetic.real_range(out.out_scale, out.out_zp, bits))]
    return inputs, outputs


def _record(s: VStreamInfo) -> dict:
    """A stream in the file's JSON description."""
    q = s.quant_info
    return {"name": s.name, "shape": list(s.shape), "order": s.format.order.name, "format_type": s.format.type.name,
            "qp_scale": q.qp_scale, "qp_zp": int(q.qp_zp), "limvals_min": q.limvals_min, "limvals_max": q.limvals_max}


def layer_report(q: QNetwork) -> dict:
    """Per-layer shapes, MACs and weight bytes, and the totals (`compile_report`'s layout); the
    normalization layer multiplies each input value once."""
    layers = {}
    if q.normalization is not None:
        n, shape = q.normalization, [int(s) for s in q.input_shape]
        layers[n.name] = compile_report.layer(shape, shape, int(np.prod(shape)), int(n.kernel.nbytes),
                                              int(n.kernel.shape[1] * 4), f"a{n.out_bits}_w{n.w_bits}", n.activation)
    for layer in q.layers:
        if isinstance(layer, QDense):
            layers[layer.name] = compile_report.layer(
                [int(layer.kernel.shape[0])], [int(layer.kernel.shape[1])], layer.macs, int(layer.kernel.nbytes),
                int(layer.kernel.shape[1] * 4), f"a{layer.out_bits}_w{layer.w_bits}", layer.activation)
        elif isinstance(layer, QConv):
            layers[layer.name] = compile_report.layer(
                list(layer.in_shape), list(layer.out_shape), layer.macs, int(layer.kernel.nbytes), layer.channels * 4,
                f"a{layer.out_bits}_w{layer.w_bits}", layer.activation)
        else:  # pooling: comparisons / additions, no weights
            layers[layer.name] = compile_report.layer(
                list(layer.in_shape), list(layer.out_shape),
                int(np.prod(layer.out_shape)) * int(np.prod(layer.size)), 0, 0, f"a{layer.bits}", "linear")
    return compile_report.build(q.name, layers)


def _layer_record(layer) -> dict:
    """A layer's geometry in the file's JSON description (its arrays hold the rest)."""
    if isinstance(layer, QDense):
        return {"name": layer.name, "activation": layer.activation, "kernel_shape": list(layer.kernel.shape)}
    if isinstance(layer, QConv):
        return {"type": "conv", "name": layer.name, "activation": layer.activation,
                "kernel_shape": list(layer.kernel.shape), "strides": list(layer.strides), "padding": layer.padding,
                "dilations": list(layer.dilations), "depthwise": layer.depthwise}
    return {"type": "pool", "name": layer.name, "kind": layer.kind, "size": list(layer.size),
            "strides": list(layer.strides), "padding": layer.padding}


def _skeleton_layer(spec: dict):
    """The float layer of a record, weights zero: what `qnpz.from_arrays` checks the arrays against."""
    kind = spec.get("type", "dense")
    if kind == "pool":
        return Pool(spec["name"], spec["kind"], tuple(spec["size"]), tuple(spec["strides"]), spec["padding"])
    kernel = np.broadcast_to(np.float32(0), tuple(int(v) for v in spec["kernel_shape"]))
    if kind == "conv":
        return Conv(spec["name"], kernel, np.zeros(0, np.float32), tuple(spec["strides"]), spec["padding"],
                    spec["activation"], bool(spec["depthwise"]), tuple(spec["dilations"]))
    if kind != "dense":
        raise ValueError(f"unknown layer type {kind!r}")
    return Dense(spec["name"], kernel, np.zeros(0, np.float32), spec["activation"])


def compile_network(q: QNetwork, hw_arch: str) -> bytes:
    """The compiled file's bytes for `q` (deterministic)."""
    arrays = qnpz.to_arrays(q)
    index, blobs, offset = {}, [], 0
    for key in sorted(arrays):
        a = np.asarray(arrays[key])
        a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        data = a.tobytes(order="C")
        index[key] = {"offset": offset, "dtype": a.dtype.str, "shape": list(a.shape)}
        pad = -len(data) % ALIGN
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    inputs, outputs = stream_infos(q)
    meta = {"format": "hailopipe emulated HEF (not loadable by a Hailo device)", "emulated": True,
            "compiler": EMULATOR, "hw_arch": hw_arch,
            "network_group": q.name, "networks": [f"{q.name}/{q.name}"], "contexts": 1,
            "inputs": [_record(s) for s in inputs], "outputs": [_record(s) for s in outputs],
            "layers": [_layer_record(layer) for layer in q.layers],
            "normalization": None if q.normalization is None else {
                "name": q.normalization.name, "channels": int(q.normalization.kernel.shape[1])},
            "input_shape": list(q.input_shape), "report": layer_report(q), "arrays": index}
    js = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    head = struct.pack(">I", len(js)) + js
    head += b"\0" * (-len(head) % ALIGN)
    body = head + b"".join(blobs)
    return HEADER.pack(MAGIC, VERSION, FLAG_EMULATED, len(body), hashlib.sha256(body).digest()) + body


def read_bytes(path: str | os.PathLike) -> bytes:
    return read_limited(path, MAX_BYTES, "compiled model")


def _info(label: str, meta: dict, digest: str, inputs, outputs) -> HefInfo:
    group = NetworkGroupInfo(meta["network_group"], int(meta["contexts"]), list(meta["networks"]), inputs, outputs,
                             [o.name for o in outputs])
    arch = meta["hw_arch"].upper()
    return HefInfo(label, VERSION, f"sha256 {digest} (verified)", arch, meta["compiler"], [group],
                   COMPATIBLE.get(arch, [arch]), emulated=True)


def _skeleton_normalization(spec) -> Normalization | None:
    """The normalization layer's name and width, as `qnpz.from_arrays` checks the arrays against."""
    if spec is None:
        return None
    channels = int(spec["channels"])
    if not isinstance(spec["name"], str) or not 1 <= channels <= 1 << 16:
        raise ValueError("bad normalization entry")
    return Normalization(spec["name"], np.ones(channels, np.float32), np.zeros(channels, np.float32))


def load(source: str | os.PathLike | bytes, name: str | None = None) -> CompiledModel:
    """Read and verify an emulated compiled file (path or bytes)."""
    label = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    buf = source if isinstance(source, bytes) else read_bytes(source)
    if is_hailo_hef(buf):
        raise RealHefError(f"{label}: is a real Hailo HEF: running it needs a Hailo device and HailoRT "
                           "(hailo_platform); `hailopipe parse-hef` can still describe it")
    if len(buf) < HEADER.size:
        raise PipelineError(f"{label}: {len(buf)} bytes is too short for a compiled model header")
    magic, version, flags, body_size, digest = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise PipelineError(f"{label}: not a compiled model (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise PipelineError(f"{label}: unsupported compiled-file version {version} (this reader knows {VERSION})")
    if not flags & FLAG_EMULATED:
        raise PipelineError(f"{label}: header flags {flags:#x} lack the emulated bit")
    body = memoryview(buf)[HEADER.size:]
    if len(body) != body_size:
        raise PipelineError(f"{label}: body is {len(body)} bytes, header says {body_size} (truncated or padded file)")
    if hashlib.sha256(body).digest() != digest:
        raise PipelineError(f"{label}: checksum mismatch: the file is corrupt")
    try:
        (js_len,) = struct.unpack_from(">I", body)
        meta = json.loads(bytes(body[4:4 + js_len]))
        data_start = 4 + js_len + (-(4 + js_len) % ALIGN)
        arrays = {}
        for key, spec in meta["arrays"].items():
            if spec["dtype"] not in DTYPES:
                raise PipelineError(f"{label}: array {key} has unsupported dtype {spec['dtype']!r}")
            dt, shape = np.dtype(spec["dtype"]), tuple(int(s) for s in spec["shape"])
            if any(s < 0 for s in shape):
                raise PipelineError(f"{label}: array {key} has a negative dimension")
            n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            start = data_start + int(spec["offset"])
            if int(spec["offset"]) < 0 or start + n > len(body):
                raise PipelineError(f"{label}: array {key} lies outside the file")
            arrays[key] = np.frombuffer(body, dt, count=n // dt.itemsize, offset=start).reshape(shape)
        skeleton = Network(meta["network_group"], tuple(int(s) for s in meta["input_shape"]),
                           [_skeleton_layer(spec) for spec in meta["layers"]],
                           normalization=_skeleton_normalization(meta.get("normalization")))
        if not skeleton.layers or any(getattr(d, "activation", "linear") not in ACTIVATIONS for d in skeleton.layers):
            raise PipelineError(f"{label}: bad layer list")
        skeleton.shapes  # noqa: B018 -- the geometry must fit (ValueError otherwise)
        qnet = qnpz.from_arrays(arrays, skeleton, label)
        inputs, outputs = stream_infos(qnet)
        if [meta["inputs"], meta["outputs"]] != [[_record(s) for s in inputs], [_record(s) for s in outputs]]:
            raise PipelineError(f"{label}: stream infos disagree with the quantized params")
        info = _info(label, meta, digest.hex(), inputs, outputs)
    except PipelineError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError, struct.error,
            UnicodeDecodeError) as exc:
        raise PipelineError(f"{label}: malformed compiled-model description ({type(exc).__name__}: {exc})") from None
    return CompiledModel(label, meta, qnet, info)
