"""Tests for hailopipe.formats.hailo_hef (and its schema, hef_schema) on a real Hailo-8 HEF (DFC 3.27.0)
and on broken copies of it."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import pytest
import xxhash

from hailopipe.formats.hailo_hef import MAGIC, HefFormatError, is_hailo_hef, main, read
from hailopipe.formats.hef_schema import MESSAGES
from hailopipe.formats.parse_hef import describe
from hailopipe.formats.streams import FormatOrder, FormatType, HefInfo

REAL_HEF = Path(__file__).resolve().parents[1].parent / "shared/data/hef/mnist_cnn.hef"



@pytest.fixture(scope="module")
def hef_bytes() -> bytes:
    if not REAL_HEF.is_file():
        pytest.skip(f"real HEF not present: {REAL_HEF}")
    return REAL_HEF.read_bytes()


@pytest.fixture(scope="module")
def body(hef_bytes) -> bytes:
    return hef_bytes[32:]


@pytest.fixture(scope="module")
def info(hef_bytes) -> HefInfo:
    return read(REAL_HEF)


def _write(tmp_path: Path, data: bytes, name: str = "x.hef") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _expect_error(path: Path, *fragments: str, **kwargs) -> str:
    with pytest.raises(HefFormatError) as ei:
        read(path, **kwargs)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert str(path) in msg and "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def _wrap(body: bytes, version: int, tail: bytes = b"", body_hash: bool = False) -> bytes:
    """A HEF header of `version` around `body` (+ `tail` as the ccws section), checksummed; for v3,
    `body_hash` sets proto_xxh3_64 (the body's own hash, and then bytes may follow)."""
    rest = body + tail
    common = MAGIC + struct.pack(">II", version, len(body))
    if version == 0:
        return common + struct.pack(">I", 0) + hashlib.md5(rest).digest() + rest
    if version == 1:
        return common + struct.pack(">IQI", zlib.crc32(rest), len(tail), 0) + rest
    xxh = xxhash.xxh3_64_intdigest(rest)
    if version == 2:
        return common + struct.pack(">QQQQ", xxh, len(tail), 0, 0) + rest
    proto_xxh = xxhash.xxh3_64_intdigest(body) if body_hash else 0
    return common + struct.pack(">QQIQQQ", 0 if body_hash else xxh, len(tail), 0, 0, proto_xxh, 0) + rest


# --- the real file ----------------------------------------------------------------------------

def test_is_hailo_hef(hef_bytes):
    assert is_hailo_hef(hef_bytes[:4])
    assert is_hailo_hef(b"\x01HEF")
    assert not is_hailo_hef(b"PK\x03\x04")
    assert not is_hailo_hef(b"\x01HE")


def test_real_header(info, hef_bytes):
    assert len(hef_bytes) == 130423
    assert info.path == str(REAL_HEF)
    assert info.header_version == 0
    assert info.checksum == "md5 fb584e3e649edfff255ded448aafc0a5 (verified)"
    assert info.hw_arch == "HAILO8P"  # what DFC 3.27 writes for --hw-arch hailo8
    assert info.compatible_archs == ["HAILO8"]
    assert info.sdk_version == "3.27.0"


def test_real_network_group(info):
    assert len(info.network_groups) == 1
    ng = info.network_groups[0]
    assert ng.name == "MNIST_CNN"
    assert ng.contexts == 1
    assert ng.networks == ["MNIST_CNN/MNIST_CNN"]
    assert ng.sorted_outputs == ["MNIST_CNN/maxpool3"]
    assert ng.ops == []


def test_real_streams(info):
    ng = info.network_groups[0]
    (inp,), (out,) = ng.inputs, ng.outputs
    assert (inp.name, inp.direction, inp.format.type, inp.format.order, inp.shape) == \
        ("MNIST_CNN/input_layer1", "input", FormatType.UINT8, FormatOrder.NHWC, (32, 32, 1))
    assert (inp.quant_info.qp_scale, inp.quant_info.qp_zp) == (1.0, 0.0)
    assert (inp.quant_info.limvals_min, inp.quant_info.limvals_max) == (0.0, 255.0)
    assert inp.network_name == "MNIST_CNN/MNIST_CNN"
    # The device order of this output is FCR, which HailoRT reports as the vstream order and whose
    # host buffer is laid out NHWC.
    assert (out.name, out.direction, out.format.type, out.format.order, out.shape) == \
        ("MNIST_CNN/maxpool3", "output", FormatType.UINT8, FormatOrder.FCR, (4, 4, 16))
    assert out.format.order.host_layout == FormatOrder.NHWC
    assert out.quant_info.qp_zp == 0.0
    assert out.quant_info.qp_scale == pytest.approx(0.0357312, rel=1e-5)
    assert out.quant_info.limvals_min == 0.0
    assert out.quant_info.limvals_max == pytest.approx(9.11145, rel=1e-5)
    assert out.quant_info.qp_scale == pytest.approx(out.quant_info.limvals_max / 255, rel=1e-6)


def test_describe(info):
    text = describe(info, style="hailort5", quantization=True)
    lines = text.splitlines()
    assert lines[:3] == ["HEF Compatible for: HAILO8", "HEF Compiler Version: 3.27.0",
                         "Network group name: MNIST_CNN, Single Context"]
    assert "    Network name: MNIST_CNN/MNIST_CNN" in lines
    assert "        VStream infos:" in lines
    assert "            Input  MNIST_CNN/input_layer1 UINT8, NHWC(32x32x1)" in lines
    assert "            Output MNIST_CNN/maxpool3 UINT8, FCR(4x4x16)" in lines
    assert "                Quantization: qp_scale=1, qp_zp=0, limvals=[0, 255]" in lines
    assert "                Quantization: qp_scale=0.035731196, qp_zp=0, limvals=[0, 9.111455]" in lines
    assert text.endswith("\n")


def test_describe_hailort4_style(info):
    lines = describe(info, style="hailort4").splitlines()
    assert lines[0] == "Architecture HEF was compiled for: HAILO8"
    assert lines[1] == "Network group name: MNIST_CNN, Single Context"
    assert describe(info) == describe(info, style="hailort4")  # a Hailo-8 HEF: HailoRT 4.x serves it
    assert "Quantization" not in describe(info)


def test_main_prints_describe(info, capsys):
    main([str(REAL_HEF)])
    assert capsys.readouterr().out == describe(info)


# --- header versions --------------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_rewrapped_header_versions(tmp_path, body, info, version):
    p = _write(tmp_path, _wrap(body, version))
    got = read(p)
    assert got.header_version == version
    assert got.network_groups == info.network_groups
    assert (got.hw_arch, got.sdk_version) == (info.hw_arch, info.sdk_version)
    if version == 0:
        assert got.checksum == info.checksum
    elif version == 1:
        assert got.checksum == f"crc32 {zlib.crc32(body):08x} (verified)"
    else:
        assert got.checksum == f"xxh3_64 {xxhash.xxh3_64_intdigest(body):016x} (verified)"


def test_v1_with_ccws_section(tmp_path, body, info):
    p = _write(tmp_path, _wrap(body, 1, tail=b"\xaa" * 64))
    assert read(p).network_groups == info.network_groups


def test_v1_bad_crc(tmp_path, body):
    data = bytearray(_wrap(body, 1))
    data[28 + 100] ^= 0x40
    _expect_error(_write(tmp_path, bytes(data)), "CRC32 mismatch", "corrupt")


def test_v1_ccws_missing(tmp_path, body):
    data = _wrap(body, 1, tail=b"\xaa" * 64)[:-10]
    _expect_error(_write(tmp_path, data), "truncated")


def test_xxh3_is_the_reference_algorithm():
    # XXH3-64 of the empty input with seed 0, from the xxHash specification's test vectors
    assert xxhash.xxh3_64_intdigest(b"") == 0x2D06800538D394C2


@pytest.mark.parametrize("version", [2, 3])
def test_bad_xxh3(tmp_path, body, version):
    data = bytearray(_wrap(body, version, tail=b"\xaa" * 16))
    data[-1] ^= 1  # in the ccws section: covered by the whole-file hash
    _expect_error(_write(tmp_path, bytes(data)), "xxh3_64 mismatch", "corrupt")


def test_v3_body_hash(tmp_path, body, info):
    data = _wrap(body, 3, tail=b"\xaa" * 16, body_hash=True)
    got = read(_write(tmp_path, data + b"trailing bytes are allowed with a body hash"))
    assert got.checksum == f"xxh3_64 of body {xxhash.xxh3_64_intdigest(body):016x} (verified)"
    assert got.network_groups == info.network_groups
    broken = bytearray(data)
    broken[56 + 10] ^= 1  # in the body
    _expect_error(_write(tmp_path, bytes(broken)), "xxh3_64 of body mismatch", "corrupt")


# --- broken files ------------------------------------------------------------------------------

def test_truncated(tmp_path, hef_bytes):
    _expect_error(_write(tmp_path, hef_bytes[:-100]), "truncated", "130391-byte body")


def test_truncated_header(tmp_path, hef_bytes):
    _expect_error(_write(tmp_path, hef_bytes[:20]), "truncated v0 header")
    _expect_error(_write(tmp_path, hef_bytes[:8], "y.hef"), "truncated header")


def test_flipped_body_byte(tmp_path, hef_bytes):
    data = bytearray(hef_bytes)
    data[5000] ^= 0x01
    _expect_error(_write(tmp_path, bytes(data)), "MD5 mismatch", "corrupt")


def test_bad_magic(tmp_path, hef_bytes):
    msg = _expect_error(_write(tmp_path, b"\x02" + hef_bytes[1:]), "not a HEF")
    assert "02484546" in msg


def test_wrong_version(tmp_path, hef_bytes):
    data = hef_bytes[:4] + struct.pack(">I", 7) + hef_bytes[8:]
    _expect_error(_write(tmp_path, data), "unsupported HEF header version 7")


def test_empty_file(tmp_path):
    _expect_error(_write(tmp_path, b""), "file is empty")


def test_huge_declared_size(tmp_path, hef_bytes):
    data = hef_bytes[:8] + struct.pack(">I", 0xFFFFFFFF) + hef_bytes[12:]
    _expect_error(_write(tmp_path, data), "truncated", "4294967295-byte body")
    huge_ccws = _wrap(hef_bytes[32:], 1)
    huge_ccws = huge_ccws[:16] + struct.pack(">Q", 1 << 62) + huge_ccws[24:]
    _expect_error(_write(tmp_path, huge_ccws, "y.hef"), "truncated")


def test_trailing_bytes(tmp_path, hef_bytes):
    _expect_error(_write(tmp_path, hef_bytes + b"\0" * 8), "8 unexpected bytes")


def test_undecodable_body(tmp_path):
    _expect_error(_write(tmp_path, _wrap(b"\xff" * 64, 0)), "protobuf body does not decode")
    _expect_error(_write(tmp_path, _wrap(b"\x0a\x02\x1a\x7f", 1), "y.hef"), "does not decode")


def test_body_without_network_groups(tmp_path):
    hef = MESSAGES["Hef"]()
    hef.header.sdk_version_str = "3.27.0"
    _expect_error(_write(tmp_path, _wrap(hef.SerializeToString(), 0)), "no network groups")


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.hef", "file not found")


def test_size_limit(tmp_path, hef_bytes):
    _expect_error(_write(tmp_path, hef_bytes), "more than the 1000-byte limit", max_bytes=1000)


# --- a synthetic HEF with the newer layout: core op + host softmax op, two contexts -------------

def _synthetic_hef() -> bytes:
    hef = MESSAGES["Hef"]()
    hef.header.hw_arch = 3  # HAILO8L
    hef.header.sdk_version.major, hef.header.sdk_version.minor = 3, 28
    ng = hef.network_groups.add()
    ng.network_group_metadata.network_group_name = "net"
    core = ng.ops.add(name="core").core_op
    core.network_group_metadata.network_group_name = "net"
    core.networks_names.append("net")
    core.sorted_outputs_order.extend(["net/softmax1", "net/fc1"])
    ctx0, ctx1 = core.contexts.add(), core.contexts.add()
    e = ctx0.metadata.edge_layers.add(direction=0)
    e.layer_info.name = "net/input_layer1"
    e.layer_info.edge_layer_base.MergeFrom(
        MESSAGES["Base"](height=28, width=28, features=1, format=1, data_bytes=1))
    e.layer_info.numeric_info.qp_scale = 1.0
    e.layer_info.numeric_info.limvals_max = 255.0
    inter = ctx0.metadata.edge_layers.add(direction=1)  # context-to-context edge: not a vstream
    inter.context_switch_info.edge_connection_type = 1
    inter.layer_info.name = "net/inter"
    for name, pad in (("net/fc1", 10), ("net/fc2", 11)):
        o = ctx1.metadata.edge_layers.add(direction=1, pad_index=pad)
        o.layer_info.name = name
        o.layer_info.edge_layer_base.MergeFrom(
            MESSAGES["Base"](height=1, width=1, features=10, format=2, data_bytes=2))
        o.layer_info.numeric_info.qp_scale, o.layer_info.numeric_info.qp_zp = 0.5, 3.0
    sm = ng.ops.add(name="softmax1")
    sm.logits_op.logits_type = 1
    sm.input_pads.add(index=20)
    out_pad = sm.output_pads.add(index=21, name="net/softmax1", format_order=6, format_type=3)
    out_pad.numeric_info.qp_scale = 1.0
    ng.pad_edges.add(src=11, dst=20)
    return hef.SerializeToString()


def test_synthetic_core_op_and_softmax(tmp_path):
    info = read(_write(tmp_path, _wrap(_synthetic_hef(), 1)))
    assert info.hw_arch == "HAILO8L" and info.compatible_archs == ["HAILO8L", "HAILO8"]
    assert info.sdk_version == "3.28.0"
    (ng,) = info.network_groups
    assert (ng.name, ng.contexts, ng.networks) == ("net", 2, ["net/net"])
    assert [s.name for s in ng.inputs] == ["net/input_layer1"]
    assert [(s.name, s.format.type.name, s.format.order.text, s.shape) for s in ng.outputs] == [
        ("net/softmax1", "FLOAT32", "NC", (10,)), ("net/fc1", "UINT16", "NC", (10,))]
    assert ng.outputs[1].quant_info.qp_zp == 3.0
    assert ng.ops == ["softmax1: SOFTMAX on host, net/fc2 -> net/softmax1"]
    assert describe(info).startswith("Architecture HEF was compiled for: HAILO8L\n")
    text = describe(info, style="hailort5")
    assert "HEF Compatible for: HAILO8L, HAILO8" in text
    assert "Network group name: net, Multi Context - Number of contexts: 2" in text
    assert "            Output net/fc1 UINT16, NC(10)" in text
    assert "            Operation:\n                softmax1: SOFTMAX on host" in text


@pytest.mark.parametrize("archs,style", [(["HAILO8"], "hailort4"), (["HAILO8L", "HAILO8"], "hailort4"),
                                         (["HAILO15H", "HAILO10H"], "hailort5"), (["HAILO10H"], "hailort5")])
def test_the_hailort_generation_that_serves_the_hef_is_the_default(archs, style):
    from hailopipe.formats.parse_hef import hailort_style

    info = HefInfo("x.hef", 0, "", archs[0], "5.1.0", [], archs)
    assert hailort_style(info) == style
    first = describe(info).splitlines()[0]
    assert first == (f"Architecture HEF was compiled for: {archs[0]}" if style == "hailort4"
                     else f"HEF Compatible for: {', '.join(archs)}")
