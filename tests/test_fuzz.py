"""Fuzz the HAR family with broken and hostile files: the HAR tar, its HN JSON (through
`har.load`), and the float-params .npz and quantized .q.npz (through `network.from_hn` /
`qnpz.from_arrays`).  The engine, the limits and the generic mutations are in tests/fuzzing.py;
other formats are in test_fuzz_models.py (compiled file, real HEF, TFLite), test_fuzz_data.py
(MNIST, calibration data, digit images) and test_fuzz_cli.py (the `hailopipe` command).

Besides byte mutations: tar headers edited and resealed (checksum fixed) so that tarfile accepts
them and the HAR reader decides; members dropped, duplicated, renamed, swapped; metadata and HN
JSON values edited; graph edits (cycles, branches, unknown types, shape mismatches); NaN/inf and
float64 weights; members with absolute or `..` paths, symlinks, hard links, devices, FIFOs, huge
declared sizes (octal, base-256, pax); .npy members with pickled objects or huge declared shapes,
a deflate bomb.

    python -m pytest -q tests/test_fuzz*.py
    python bench/fuzz_report.py          # the same cases, with counts per format and outcome
"""

from __future__ import annotations

import copy
import io
import json
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from hailopipe.fileio import json_bytes, load_npz, npz_bytes
from hailopipe.formats import har, hn, qnpz
from hailopipe.quantization.config import OptimizeConfig
from hailopipe.quantization.optimizer import with_normalization
from tests.conftest import random_network
from tests.fuzzing import (
    JSON_VALUES,
    LINUX_ONLY,
    NPY_HEADERS,
    PATH_CASES,
    Format,
    check,
    edit_arrays,
    json_text,
    mutate_bytes,
    mutate_json,
    npy,
    npy_raw,
    raw_cases,
    tiny_net,
    tiny_qnet,
    zip_members,
)

pytestmark = LINUX_ONLY


def tar_bytes(members: list[tuple[tarfile.TarInfo | str, bytes]], fmt=tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, payload in members:
            if isinstance(info, str):
                info = tarfile.TarInfo(info)
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    return buf.getvalue()


def har_members(h: har.Har) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(har.har_bytes(h))) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


# --- HAR (tar) -------------------------------------------------------------------------------------

TAR_FIELDS = {"name": (0, 100), "mode": (100, 8), "uid": (108, 8), "size": (124, 12), "mtime": (136, 12),
              "type": (156, 1), "linkname": (157, 100), "magic": (257, 8), "prefix": (345, 155)}
TAR_VALUES = {
    "name": [b"../x.hn", b"/tmp/x.hn", b"a/b", b".", b"", b"x" * 100, b"net.hn", b"net.npz", b".hidden",
             b"net.metadata.json", b"..\\x", b"net.q.npz"],
    "mode": [b"0004755\0", b"7777777\0", b"\0" * 8, b"zzzzzzz\0"],
    "uid": [b"\x80" + b"\xff" * 7, b"7777777\0"],
    "size": [b"77777777777\0", b"00000000000\0", b"\x80" + b"\0" * 3 + b"\x7f" + b"\xff" * 7, b"\xff" * 12,
             b"-1\0" + b"\0" * 9, b"00000000001\0", b"10000000000\0", b"zzzzzzzzzzz\0"],
    "mtime": [b"\xff" * 12, b"77777777777\0"],
    "type": [b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"x", b"g", b"L", b"K", b"S", b"\0", b"V", b"M"],
    "linkname": [b"/etc/passwd", b"../../x", b"net.hn", b""],
    "magic": [b"\0" * 8, b"ustar  \0", b"GNUtar\0\0"],
    "prefix": [b"..", b"/tmp", b"a"],
}


def tar_offsets(raw: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [m.offset for m in tar.getmembers()]


def reseal_tar_header(raw: bytes, offset: int, name: str, value: bytes) -> bytes:
    """Write `value` into header field `name` of the member at `offset` and fix the header checksum,
    so that tarfile accepts the header and the HAR reader's own checks decide."""
    start, length = TAR_FIELDS[name]
    b = bytearray(raw)
    b[offset + start:offset + start + length] = value[:length].ljust(length, b"\0")
    b[offset + 148:offset + 156] = b" " * 8
    b[offset + 148:offset + 156] = b"%06o\0 " % sum(b[offset:offset + 512])
    return bytes(b)


def _ti(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


def hostile_har(members: list[tuple[str, bytes]], seed: bytes) -> Iterator[tuple[str, bytes]]:
    def plus(info, payload=b"", fmt=tarfile.USTAR_FORMAT):
        return tar_bytes(members + [(info, payload)], fmt)

    def instead_of_hn(info, payload=b""):
        return tar_bytes([m if m[0] != "net.hn" else (info, payload) for m in members])

    yield "hostile:absolute", plus(_ti("/tmp/evil.hn", size=2), b"{}")
    yield "hostile:dotdot", plus(_ti("../evil.hn", size=2), b"{}")
    yield "hostile:nested-dotdot", plus(_ti("a/../../evil.hn", size=2), b"{}")
    yield "hostile:symlink", instead_of_hn(_ti("net.hn", tarfile.SYMTYPE, linkname="/etc/passwd"))
    yield "hostile:symlink-dotdot", plus(_ti("up", tarfile.SYMTYPE, linkname="../../.."))
    yield "hostile:hardlink", instead_of_hn(_ti("net.hn", tarfile.LNKTYPE, linkname="/etc/passwd"))
    yield "hostile:char-device", plus(_ti("zero", tarfile.CHRTYPE, devmajor=1, devminor=5))
    yield "hostile:block-device", plus(_ti("sda", tarfile.BLKTYPE, devmajor=8, devminor=0))
    yield "hostile:fifo-member", plus(_ti("pipe", tarfile.FIFOTYPE))
    yield "hostile:directory-member", plus(_ti("dir", tarfile.DIRTYPE))
    yield "hostile:sparse-member", plus(_ti("sparse", tarfile.GNUTYPE_SPARSE))
    yield "hostile:pax-size", plus(_ti("big", size=2, pax_headers={"size": str(2**40)}), b"{}", tarfile.PAX_FORMAT)
    yield "hostile:pax-path", plus(_ti("ok", size=2, pax_headers={"path": "../../evil"}), b"{}", tarfile.PAX_FORMAT)
    yield "hostile:gnu-longname", plus(_ti("../" * 60 + "evil", size=2), b"{}", tarfile.GNU_FORMAT)
    yield "hostile:17-members", tar_bytes(members + [(f"extra{i}", b"x") for i in range(14)])
    yield "hostile:duplicate-member", tar_bytes(members + [members[1]])
    yield "hostile:gzip-compressed", zlib.compress(seed)  # not gzip framing, but compressed bytes
    offsets = tar_offsets(seed)
    for label, value in [("octal-8GiB", b"77777777777\0"), ("base256-2^62", b"\x80" + b"\0" * 3 + b"\x40" + b"\0" * 7),
                         ("base256-max", b"\xff" * 12)]:
        for i, off in enumerate(offsets):
            yield f"hostile:size-{label}-member{i}", reseal_tar_header(seed, off, "size", value)


def har_cases(rng) -> Iterator[tuple[str, bytes]]:
    net = tiny_net()
    q = tiny_qnet(net)
    plain, quant = har.Har("hailo_model", net), har.Har("quantized_model", with_normalization(net, OptimizeConfig()), q)
    seeds = [har.har_bytes(plain), har.har_bytes(quant),
             har.har_bytes(har.Har("hailo_model", random_network((8,), name="net")))]
    yield from raw_cases(rng, seeds, 550)
    for _ in range(300):
        seed = seeds[int(rng.integers(2))]
        offsets = tar_offsets(seed)
        name = str(rng.choice(list(TAR_VALUES)))
        values = TAR_VALUES[name]
        value = values[int(rng.integers(len(values)))]
        if name == "size" and rng.random() < 0.5:
            value = b"%011o\0" % int(rng.integers(0, 1 << 33))
        yield f"tar-header:{name}", reseal_tar_header(seed, offsets[int(rng.integers(len(offsets)))], name, value)
    members = har_members(quant)
    meta = json.loads(members[0][1])
    for _ in range(150):
        m = list(members)
        op = int(rng.integers(6))
        i = int(rng.integers(len(m)))
        if op == 0:
            del m[i]
        elif op == 1:
            m.insert(int(rng.integers(len(m) + 1)), m[i])
        elif op == 2:
            m[i] = (str(rng.choice(["other.hn", "net.npz", "net.q.npz", "x.metadata.json", "net.hn"])), m[i][1])
        elif op == 3:
            m[i] = (m[i][0], m[int(rng.integers(len(m)))][1])
        elif op == 4:
            m[0] = (m[0][0], json_text(mutate_json(rng, meta, int(rng.integers(1, 4)))))
        else:
            m[0] = (m[0][0], json_bytes(dict(meta, state=str(rng.choice(list(har.STATES) + ["bogus"])))))
        yield f"members:{['drop', 'duplicate', 'rename', 'swap-content', 'metadata-json', 'state'][op]}", tar_bytes(m)
    yield from hostile_har(members, seeds[1])
    yield from PATH_CASES


# --- HN JSON, through har.load -----------------------------------------------------------------------

HN_TYPES = ["conv", "dense", "input_layer", "output_layer", "", None, 5, "Dense"]


def graph_edit(rng, graph: dict) -> tuple[str, dict]:
    graph = copy.deepcopy(graph)
    layers = graph["layers"]
    names = list(layers)
    name = names[int(rng.integers(len(names)))]
    layer = layers[name]
    other = names[int(rng.integers(len(names)))]
    op = str(rng.choice(["rewire-out", "rewire-in", "type", "shape", "kernel-shape", "activation", "remove",
                         "rename", "duplicate", "original-names"]))
    if op == "rewire-out":
        layer["output"] = [other] if rng.random() < 0.8 else [other, name]
    elif op == "rewire-in":
        layer["input"] = [other]
    elif op == "type":
        layer["type"] = HN_TYPES[int(rng.integers(len(HN_TYPES)))]
    elif op == "shape":
        layer["output_shapes"] = [[-1, 1, 1, int(rng.integers(-1, 10))]]
    elif op == "kernel-shape":
        layer.setdefault("params", {})["kernel_shape"] = [int(x) for x in rng.integers(-1, 10, 2)]
    elif op == "activation":
        layer.setdefault("params", {})["activation"] = str(rng.choice(["relu", "linear", "swish", "", "RELU"]))
    elif op == "remove":
        del layers[name]
    elif op == "rename":
        layers[name + "x"] = layers.pop(name)
    elif op == "duplicate":
        layers[name + "_copy"] = copy.deepcopy(layer)
    else:
        layer["original_names"] = JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]
    return op, graph


def hn_cases(rng) -> Iterator[tuple[str, bytes]]:
    net = tiny_net()
    graph = hn.to_hn(net)
    params = npz_bytes(hn.weights(net))
    meta = json_bytes({"state": "hailo_model", "net_name": "net"})

    def pack(hn_bytes: bytes, npz: bytes = params) -> bytes:
        return tar_bytes([("net.metadata.json", meta), ("net.hn", hn_bytes), ("net.npz", npz)])

    for _ in range(650):
        yield "json-values:edit", pack(json_text(mutate_json(rng, graph, int(rng.integers(1, 4)))))
    for _ in range(250):
        op, edited = graph_edit(rng, graph)
        yield f"graph:{op}", pack(json_text(edited))
    for _ in range(150):
        kind, text = mutate_bytes(rng, json_bytes(graph))
        yield f"text:{kind}", pack(text)
    L = "net/fc1", "net/fc2", "net/input_layer1", "net/output_layer1"

    def edited(fn) -> bytes:
        doc = copy.deepcopy(graph)
        fn(doc["layers"])
        return json_text(doc)

    yield "hostile:cycle", pack(edited(lambda layers: (layers[L[1]].update(output=[L[0]]), layers[L[0]].update(input=[L[1]]))))
    yield "hostile:self-loop", pack(edited(lambda layers: (layers[L[0]].update(output=[L[0]]), layers[L[0]].update(input=[L[0]]))))
    yield "hostile:branch", pack(edited(lambda layers: layers[L[2]].update(output=[L[0], L[1]])))
    yield "hostile:two-inputs", pack(edited(lambda layers: layers.update({"net/input_layer2": copy.deepcopy(layers[L[2]])})))
    yield "hostile:unknown-type", pack(edited(lambda layers: layers[L[0]].update(type="conv")))
    yield "hostile:shape-mismatch", pack(edited(lambda layers: layers[L[0]].update(output_shapes=[[-1, 1, 1, 5]])))
    yield "hostile:kernel-shape-mismatch", pack(edited(lambda layers: layers[L[0]]["params"].update(kernel_shape=[4, 5])))
    yield "hostile:huge-shape", pack(edited(lambda layers: layers[L[2]].update(output_shapes=[[-1, 2**32, 2**32, 1]])))
    yield "hostile:original-names-int", pack(edited(lambda layers: layers[L[2]].update(original_names=5)))
    yield "hostile:original-names-dict", pack(edited(lambda layers: layers[L[0]].update(original_names={"a": 1})))
    for bad in (np.nan, np.inf, -np.inf):
        weights = dict(hn.weights(net))
        weights["net/fc1/kernel:0"] = weights["net/fc1/kernel:0"].copy()
        weights["net/fc1/kernel:0"][0, 0] = bad
        yield f"hostile:weights-{bad}", pack(json_bytes(graph), npz_bytes(weights))
    as_f64 = {k: v.astype(np.float64) for k, v in hn.weights(net).items()}
    yield "hostile:float64-weights", pack(json_bytes(graph), npz_bytes(as_f64))
    yield "hostile:deep-nesting", pack(b"[" * 100000 + b"]" * 100000)
    yield "hostile:deep-nesting-in-value", pack(json_bytes(graph)[:-2] + b', "x": ' + b"[" * 50000 + b"]" * 50000 + b"}\n")
    yield "hostile:huge-int", pack(b'{"name": ' + b"9" * 5000 + b"}")
    yield "hostile:nan-literal", pack(json_bytes(graph).replace(b"-1,", b"NaN,", 1))
    yield "hostile:utf16", pack(json.dumps(graph).encode("utf-16"))
    for doc in ([], "net", 5, None):
        yield f"hostile:graph-is-{type(doc).__name__}", pack(json_text(json.dumps(doc)))
    chain = hn.to_hn(tiny_net(hidden=(4,) * 2000))
    yield "hostile:2000-layer-chain-without-weights", pack(json_bytes(chain))


# --- .npz: float params and .q.npz ---------------------------------------------------------------


_BOMB: list[bytes] = []


def deflate_bomb() -> bytes:
    """A .npz whose one member inflates to 256 MiB of zeros from ~256 KiB (built once)."""
    if not _BOMB:
        header = npy_raw("{'descr': '|u1', 'fortran_order': False, 'shape': (268435456,), }")
        buf = io.BytesIO()
        info = zipfile.ZipInfo("bomb.npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(buf, "w") as zf:
            with zf.open(info, "w") as f:
                f.write(header)
                zeros = bytes(1 << 20)
                for _ in range(256):
                    f.write(zeros)
        _BOMB.append(buf.getvalue())
    return _BOMB[0]


def npz_cases_for(arrays: dict[str, np.ndarray]):
    def cases(rng) -> Iterator[tuple[str, bytes]]:
        seed = npz_bytes(arrays)
        yield from raw_cases(rng, [seed], 500)
        for _ in range(500):
            op, members = edit_arrays(rng, arrays)
            compression = zipfile.ZIP_DEFLATED if rng.random() < 0.2 else zipfile.ZIP_STORED
            yield f"arrays:{op}", zip_members(members, compression)
        first = sorted(arrays)[0]
        yield "hostile:pickled-object", zip_members({first + ".npy": npy(np.array([{"x": 1}], dtype=object))})
        for i, header in enumerate(NPY_HEADERS):
            yield f"hostile:npy-header-{i}", zip_members({first + ".npy": npy_raw(header, b"\0" * 64)})
        yield "hostile:deflate-bomb", deflate_bomb()
        yield "hostile:not-npy-member", zip_members({"evil.txt": b"hello"})
        yield "hostile:dotdot-member", zip_members({"../../evil.npy": npy(np.zeros(2, np.float32))})
        yield "hostile:5000-members", zip_members({f"a{i}.npy": npy(np.zeros(1)) for i in range(5000)})
        yield "hostile:bare-npy", npy(arrays[first])
        big = bytearray(seed)  # the first central-directory entry declares a 4 GiB member
        cd = seed.index(b"PK\x01\x02")
        big[cd + 24:cd + 28] = b"\xfe\xff\xff\xff"
        yield "hostile:declared-4GiB", bytes(big)
        yield from PATH_CASES
    return cases


def npz_float_format() -> Format:
    net = tiny_net()
    graph = hn.to_hn(net)
    return Format("npz-float-params", "net.npz", npz_cases_for(hn.weights(net)),
                  lambda p: hn.from_hn(graph, load_npz(p), str(p)))


def npz_quant_format() -> Format:
    net = tiny_net()
    arrays = qnpz.to_arrays(tiny_qnet(net))
    normalized = with_normalization(net, OptimizeConfig())
    return Format("npz-quantized (.q.npz)", "net.q.npz", npz_cases_for(arrays),
                  lambda p: qnpz.from_arrays(load_npz(p), normalized, str(p)))


FORMATS = {f.name: f for f in [Format("har", "m.har", har_cases, har.load),
                                Format("hn (through har.load)", "m.har", hn_cases, har.load),
                                npz_float_format(), npz_quant_format()]}


@pytest.mark.parametrize("name", list(FORMATS))
def test_fuzz_format(name, tmp_path):
    check(FORMATS[name], tmp_path)
    # members with absolute or `..` names: `check` watches the fuzz directory; outside it:
    assert not any(Path(p).exists() for p in ("/tmp/evil.hn", "/evil", tmp_path.parent / "evil.hn"))
