"""Fuzz the model files with broken and hostile inputs: the emulator's compiled file (`ehef.load`),
a real Hailo HEF (`hailo_hef.read`, on mutations of ../shared/data/hef/mnist_cnn.hef,
skipped if absent) and TFLite (`tflite.read`).  Engine and limits: tests/fuzzing.py.

Checksummed formats are also mutated and *resealed* (sha256 / MD5 / CRC-32 recomputed) so that the
mutation reaches the parser: JSON description edits, array index edits (negative, huge, infinite
offsets; object and unicode dtypes; overflowing shapes), protobuf field edits (clear, drop,
duplicate, boundary values), a 5000-deep nested message; TFLite flatbuffers are edited through
LiteRT's object API (shapes, types, buffers, opcodes, op inputs/outputs, activations, subgraphs).
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from hailopipe.formats import ehef, hailo_hef, tflite
from hailopipe.formats.hef_schema import MESSAGES
from tests.conftest import random_network
from tests.fuzzing import (
    LINUX_ONLY,
    PATH_CASES,
    Format,
    check,
    deep,
    json_text,
    mutate_bytes,
    mutate_json,
    raw_cases,
    tiny_net,
    tiny_qnet,
)

pytestmark = LINUX_ONLY
REAL_HEF = Path(__file__).resolve().parents[1].parent / "shared/data/hef/mnist_cnn.hef"


# --- the emulator's compiled file (ehef.load) -----------------------------------------------------


def reseal_hef(body: bytes, size: int | None = None, version: int = ehef.VERSION, flags: int = ehef.FLAG_EMULATED,
               magic: bytes = ehef.MAGIC) -> bytes:
    """Header with a correct sha256 (and size) for `body`: the reader's checks after the checksum decide."""
    return ehef.HEADER.pack(magic, version, flags, len(body) if size is None else size,
                           hashlib.sha256(body).digest()) + body


def hef_parts(raw: bytes) -> tuple[dict, bytes]:
    body = raw[ehef.HEADER.size:]
    (n,) = struct.unpack_from(">I", body)
    return json.loads(body[4:4 + n]), body[4 + n + (-(4 + n) % ehef.ALIGN):]


def hef_body(meta, arrays: bytes, js: bytes | None = None) -> bytes:
    js = json_text(meta) if js is None else js
    head = struct.pack(">I", len(js)) + js
    return head + b"\0" * (-len(head) % ehef.ALIGN) + arrays


def hef_cases(rng) -> Iterator[tuple[str, bytes]]:
    seeds = [ehef.compile_network(tiny_qnet(tiny_net()), "hailo8"),
             ehef.compile_network(tiny_qnet(random_network((8,), name="net")), "hailo8")]
    yield from raw_cases(rng, seeds, 350)
    for _ in range(300):
        seed = seeds[int(rng.integers(len(seeds)))]
        kind, body = mutate_bytes(rng, seed[ehef.HEADER.size:])
        yield f"resealed-bytes:{kind}", reseal_hef(body)
    meta, arrays = hef_parts(seeds[0])
    for _ in range(400):
        yield "resealed-json:edit", reseal_hef(hef_body(mutate_json(rng, meta, int(rng.integers(1, 4))), arrays))
    key = sorted(meta["arrays"])[0]

    def spec_edit(**changes) -> bytes:
        m = copy.deepcopy(meta)
        m["arrays"][key].update(changes)
        return reseal_hef(hef_body(m, arrays))

    body = seeds[0][ehef.HEADER.size:]
    yield "hostile:real-hailo-magic", b"\x01HEF" + bytes(60)
    yield "hostile:body-size-2^63", reseal_hef(body, size=2**63)
    yield "hostile:version-0", reseal_hef(body, version=0)
    yield "hostile:flags-0", reseal_hef(body, flags=0)
    yield "hostile:json-length-past-end", reseal_hef(struct.pack(">I", 2**32 - 1) + body[4:])
    yield "hostile:deep-json", reseal_hef(hef_body(None, arrays, b"[" * 100000 + b"]" * 100000))
    yield "hostile:meta-is-list", reseal_hef(hef_body([meta], arrays))
    yield "hostile:arrays-is-list", reseal_hef(hef_body(dict(meta, arrays=[1, 2]), arrays))
    yield "hostile:layers-is-dict", reseal_hef(hef_body(dict(meta, layers={"a": 1}), arrays))
    for label, changes in [("offset-negative", {"offset": -64}), ("offset-huge", {"offset": 2**62}),
                           ("offset-inf", {"offset": float("inf")}), ("offset-string", {"offset": "0"}),
                           ("dtype-object", {"dtype": "|O"}), ("dtype-unicode", {"dtype": "<U4"}),
                           ("shape-huge", {"shape": [2**40]}), ("shape-overflow", {"shape": [2**62, 4]}),
                           ("shape-negative", {"shape": [-1]}), ("shape-nan", {"shape": [float("nan")]}),
                           ("shape-deep", {"shape": deep(400)})]:
        yield f"hostile:array-{label}", spec_edit(**changes)
    yield "hostile:kernel-shape-huge", reseal_hef(hef_body(
        dict(meta, layers=[dict(meta["layers"][0], kernel_shape=[2**31, 2**31])] + meta["layers"][1:]), arrays))
    yield from PATH_CASES


# --- the real Hailo HEF (hailo_hef.read) -----------------------------------------------


def reseal_v0(body: bytes) -> bytes:
    return struct.pack(">IIII", 0x01484546, 0, len(body), 0) + hashlib.md5(body).digest() + body


def reseal_v1(body: bytes, ccws: bytes = b"") -> bytes:
    crc = zlib.crc32(body + ccws) & 0xFFFFFFFF
    return struct.pack(">IIIIQI", 0x01484546, 1, len(body), crc, len(ccws), 0) + body + ccws


PROTO_VALUES = {"int32": [-(2**31), -1, 0, 1, 3, 100, 2**31 - 1], "uint32": [0, 1, 2, 7, 1000, 2**32 - 1],
                "uint64": [0, 1, 2**63, 2**64 - 1], "bool": [True, False],
                "float": [float("nan"), float("inf"), -1.0, 0.0, 1e38], "double": [float("nan"), -1.0, 1e308],
                "string": ["", "x" * 1000, "../x", "\u2028", "a/b"]}
_PROTO_TYPES = {5: "int32", 13: "uint32", 4: "uint64", 8: "bool", 2: "float", 1: "double", 9: "string"}


def mutate_proto(rng, msg) -> str:
    """Edit one field of a protobuf message tree in place: clear, drop or duplicate an element, or set a
    boundary value; return a label."""
    slots = []

    def walk(m, depth):
        for fd in m.DESCRIPTOR.fields:
            slots.append((m, fd))
        for fd, value in m.ListFields():
            if fd.message_type is not None and depth < 12:
                for sub in (value if fd.is_repeated else [value]):
                    walk(sub, depth + 1)

    walk(msg, 0)
    m, fd = slots[int(rng.integers(len(slots)))]
    values = PROTO_VALUES.get(_PROTO_TYPES.get(fd.type, ""), [])
    if fd.is_repeated:
        items = getattr(m, fd.name)
        op = int(rng.integers(3))
        if op == 0 or not len(items):
            m.ClearField(fd.name)
            return f"clear-{fd.name}"
        i = int(rng.integers(len(items)))
        if op == 1:
            del items[i]
            return f"drop-{fd.name}"
        if fd.message_type is not None:
            items.add().CopyFrom(items[i])
        elif values:
            items.append(values[int(rng.integers(len(values)))])
        return f"grow-{fd.name}"
    if fd.message_type is not None:
        if rng.random() < 0.5:
            m.ClearField(fd.name)
            return f"clear-{fd.name}"
        getattr(m, fd.name).SetInParent()
        return f"empty-{fd.name}"
    setattr(m, fd.name, values[int(rng.integers(len(values)))])
    return f"set-{fd.name}"


def _nested_edges(depth: int) -> bytes:
    """EdgeLayer.layer_mux.predecessors.layer_mux... `depth` levels: a recursion bomb."""
    inner = b""
    for i in range(depth):
        tag = b"\x22" if i % 2 else b"\x2a"  # EdgeLayer/Edge field 4 or 2 / LayerMux field 5
        inner = tag + _varint(len(inner)) + inner
    return inner


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def hailo_hef_cases(rng) -> Iterator[tuple[str, bytes]]:
    raw = REAL_HEF.read_bytes()
    body = raw[32:]
    yield from raw_cases(rng, [raw], 300)
    for _ in range(300):
        kind, mutated = mutate_bytes(rng, body)
        yield f"resealed-bytes:{kind}", reseal_v0(mutated)
    parsed = MESSAGES["Hef"].FromString(body)
    for _ in range(400):
        m = copy.deepcopy(parsed)
        labels = [mutate_proto(rng, m) for _ in range(int(rng.integers(1, 4)))]
        yield "resealed-proto:" + "+".join(labels), reseal_v0(m.SerializeToString())
    for _ in range(50):
        kind, mutated = mutate_bytes(rng, body)
        yield f"v1-resealed:{kind}", reseal_v1(mutated, rng.bytes(int(rng.integers(0, 64))))
    yield "hostile:proto-size-4GiB", struct.pack(">IIII", 0x01484546, 0, 2**32 - 1, 0) + raw[16:]
    yield "hostile:version-9", struct.pack(">III", 0x01484546, 9, len(body)) + raw[12:]
    yield "hostile:v3-padding-over-ccws", struct.pack(">IIIQQIQQQ", 0x01484546, 3, len(body), 0, 1, 2, 0, 0, 0) + body
    yield "hostile:v2-ccws-2^63", struct.pack(">IIIQQQQ", 0x01484546, 2, len(body), 0, 2**63, 0, 0) + body
    ctx = b"\x12" + _varint(len(_nested_edges(5000))) + _nested_edges(5000)  # ContextMetadata.edge_layers
    yield "hostile:nested-mux-5000", reseal_v0(b"\x12" + _varint(len(ctx) + 2) + b"\x1a" + _varint(len(ctx)) + ctx)
    yield "hostile:empty-body", reseal_v0(b"")
    yield from PATH_CASES


# --- TFLite ------------------------------------------------------------------------------------------


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def tiny_tflite(hidden: int = 3, softmax: bool = True, seed: int = 0) -> bytes:
    """A float TFLite model input [1,2,2,1] -> RESHAPE -> FC(relu) -> FC [-> SOFTMAX], written with
    LiteRT's flatbuffer schema (no TensorFlow)."""
    import flatbuffers

    s = _schema()
    rng = np.random.default_rng(seed)
    consts = [None, np.array([-1, 4], "<i4"), rng.standard_normal((hidden, 4)), rng.standard_normal(hidden),
              rng.standard_normal((2, hidden)), rng.standard_normal(2)]
    buffers = []
    for c in consts:
        b = s.BufferT()
        if c is not None:
            b.data = np.frombuffer(np.asarray(c, "<f4" if c.dtype.kind == "f" else c.dtype).tobytes(), np.uint8)
        buffers.append(b)
    specs = [([1, 2, 2, 1], 0, "input"), ([2], 1, "shape"), ([1, 4], 0, "flat"), ([hidden, 4], 2, "w1"),
             ([hidden], 3, "b1"), ([1, hidden], 0, "h1"), ([2, hidden], 4, "w2"), ([2], 5, "b2"),
             ([1, 2], 0, "logits"), ([1, 2], 0, "probs")]
    tensors = []
    for shape, buf, name in specs:
        t = s.TensorT()
        t.shape, t.buffer, t.name = shape, buf, name.encode()
        t.type = s.TensorType.INT32 if name == "shape" else s.TensorType.FLOAT32
        tensors.append(t)
    codes = []
    for c in (s.BuiltinOperator.RESHAPE, s.BuiltinOperator.FULLY_CONNECTED, s.BuiltinOperator.SOFTMAX):
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = c, min(c, 127), 1
        codes.append(oc)

    def op(code, ins, outs, act=None):
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code, ins, outs
        if act is not None:
            o.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
            o.builtinOptions = s.FullyConnectedOptionsT()
            o.builtinOptions.fusedActivationFunction = act
        return o

    g = s.SubGraphT()
    g.tensors, g.inputs, g.outputs = tensors, [0], [9 if softmax else 8]
    A = s.ActivationFunctionType
    g.operators = [op(0, [0, 1], [2]), op(1, [2, 3, 4], [5], A.RELU), op(1, [5, 6, 7], [8], A.NONE)]
    if softmax:
        g.operators.append(op(2, [8], [9]))
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, codes, [g], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def edit_tflite(rng, raw: bytes) -> tuple[str, bytes]:
    import flatbuffers

    s = _schema()
    m = s.ModelT.InitFromPackedBuf(raw, 0)
    g = m.subgraphs[0]
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    op = str(rng.choice(["tensor-shape", "tensor-type", "tensor-buffer", "opcode", "op-inputs", "op-outputs",
                         "activation", "builtin-code", "graph-io", "buffer-data", "drop-op", "subgraphs"]))
    if op == "tensor-shape":
        pick(g.tensors).shape = [int(x) for x in rng.integers(-2, 6, int(rng.integers(0, 5)))]
    elif op == "tensor-type":
        pick(g.tensors).type = int(rng.integers(0, 20))
    elif op == "tensor-buffer":
        pick(g.tensors).buffer = int(rng.integers(0, 10))
    elif op == "opcode":
        pick(g.operators).opcodeIndex = int(rng.integers(0, 5))
    elif op == "op-inputs":
        pick(g.operators).inputs = [int(x) for x in rng.integers(-1, 12, int(rng.integers(0, 4)))]
    elif op == "op-outputs":
        pick(g.operators).outputs = [int(x) for x in rng.integers(-1, 12, int(rng.integers(0, 3)))]
    elif op == "activation":
        o = g.operators[1]
        o.builtinOptions.fusedActivationFunction = int(rng.integers(0, 7))
    elif op == "builtin-code":
        c = pick(m.operatorCodes)
        c.builtinCode = c.deprecatedBuiltinCode = int(rng.integers(0, 127))
    elif op == "graph-io":
        g.inputs = [int(x) for x in rng.integers(-1, 12, int(rng.integers(0, 3)))]
        g.outputs = [int(rng.integers(-1, 12))]
    elif op == "buffer-data":
        b = pick(m.buffers[1:])
        b.data = None if rng.random() < 0.3 else b.data[:int(rng.integers(0, len(b.data) + 1))]
    elif op == "drop-op":
        del g.operators[int(rng.integers(len(g.operators)))]
    else:
        m.subgraphs = [g, g] if rng.random() < 0.5 else []
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return op, bytes(builder.Output())


def tflite_cases(rng) -> Iterator[tuple[str, bytes]]:
    seeds = [tiny_tflite(), tiny_tflite(5, softmax=False, seed=1)]
    yield from raw_cases(rng, seeds, 650)
    for _ in range(350):
        op, raw = edit_tflite(rng, seeds[int(rng.integers(len(seeds)))])
        yield f"flatbuffer:{op}", raw
    yield "hostile:identifier-only", b"\0\0\0\0TFL3"
    b = bytearray(seeds[0])
    b[0:4] = struct.pack("<I", len(b) - 4)  # root table offset pointing at the end
    yield "hostile:root-offset-at-end", bytes(b)
    b[0:4] = struct.pack("<I", 2**31)
    yield "hostile:root-offset-2^31", bytes(b)
    yield from PATH_CASES


FORMATS = {f.name: f for f in [Format("compiled file (ehef.load)", "m.hef", hef_cases, ehef.load)]
           + ([Format("real Hailo HEF (hailo_hef.read)", "m.hef", hailo_hef_cases, hailo_hef.read)]
              if REAL_HEF.is_file() else [])
           + [Format("tflite", "m.tflite", tflite_cases, lambda p: tflite.read(p, "net"))]}


@pytest.mark.parametrize("name", list(FORMATS))
def test_fuzz_format(name, tmp_path):
    check(FORMATS[name], tmp_path)


def test_real_hef_present_or_skipped():
    if not REAL_HEF.is_file():
        pytest.skip(f"{REAL_HEF} absent: the real-HEF fuzz format is not run")
    assert "real Hailo HEF (hailo_hef.read)" in FORMATS
