"""The emulator's compiled file: round trip, determinism, and refusal of corrupt or foreign files."""

import struct

import numpy as np
import pytest

from hailopipe.engine import Engine
from hailopipe.errors import PipelineError
from hailopipe.formats import ehef
from tests.conftest import SHARED


@pytest.fixture
def compiled(tmp_path, fitted_qnet):
    p = tmp_path / "m.hef"
    p.write_bytes(ehef.compile_network(fitted_qnet, "hailo8"))
    return p


def test_round_trip_runs_identically(compiled, fitted_qnet):
    m = ehef.load(compiled)
    q_in = np.random.default_rng(0).integers(-128, 128, (50, 28, 28, 1)).astype(np.int8)
    assert (Engine(m.qnet).run(q_in) == Engine(fitted_qnet).run(q_in)).all()
    assert m.meta["emulated"] is True and m.meta["hw_arch"] == "hailo8"


def test_header_is_not_a_hailo_hef(compiled):
    raw = compiled.read_bytes()
    magic, version, flags, size, _ = ehef.HEADER.unpack_from(raw)
    assert magic == b"EHEF" and raw[:4] != b"\x01HEF"
    assert version == 1 and flags & ehef.FLAG_EMULATED and size == len(raw) - ehef.HEADER.size


def test_bytes_are_deterministic(fitted_qnet):
    assert ehef.compile_network(fitted_qnet, "hailo8") == ehef.compile_network(fitted_qnet, "hailo8")


def test_stream_infos(compiled, fitted_qnet):
    m = ehef.load(compiled)
    (i,), (o,) = m.meta["inputs"], m.meta["outputs"]
    assert i["name"] == "net/input_layer1" and i["shape"] == [28, 28, 1] and i["order"] == "NHWC"
    # raw pixels with identity quantization, as the real Hailo-8 MNIST HEF's input (the normalization is a layer)
    assert i["format_type"] == "UINT8" and (i["qp_zp"], i["qp_scale"], i["limvals_min"], i["limvals_max"]) == (0, 1, 0, 255)
    assert o["name"] == "net/fc3" and o["shape"] == [10] and o["order"] == "NC"
    assert o["qp_zp"] == fitted_qnet.output.out_zp + 128


def test_compile_report(fitted_qnet):
    r = ehef.layer_report(fitted_qnet)
    assert list(r["layers"]) == ["normalization1", "fc1", "fc2", "fc3"]
    assert r["layers"]["normalization1"] == {"input_shape": [28, 28, 1], "output_shape": [28, 28, 1], "macs": 784,
                                             "weight_bytes": 1, "bias_bytes": 4, "precision_mode": "a8_w8",
                                             "activation": "linear"}
    assert r["layers"]["fc1"]["macs"] == 784 * 64
    assert r["total"]["macs"] == 784 + 784 * 64 + 64 * 32 + 32 * 10 and r["total"]["layers"] == 4


def _expect_error(path, words):
    with pytest.raises(PipelineError) as err:
        ehef.load(path)
    assert str(path) in str(err.value) and words in str(err.value)


@pytest.mark.parametrize("position", [60, 500, -1])
def test_flipped_byte_fails_checksum(compiled, position):
    raw = bytearray(compiled.read_bytes())
    raw[position] ^= 0x40
    compiled.write_bytes(bytes(raw))
    _expect_error(compiled, "checksum")


@pytest.mark.parametrize("keep", [0, 10, 52, 1000])
def test_truncated(compiled, keep):
    compiled.write_bytes(compiled.read_bytes()[:keep])
    _expect_error(compiled, "")


def test_wrong_version_and_magic(compiled):
    raw = bytearray(compiled.read_bytes())
    raw[4:8] = struct.pack(">I", 9)
    compiled.write_bytes(bytes(raw))
    _expect_error(compiled, "version 9")
    raw[:4] = b"PK\x03\x04"
    compiled.write_bytes(bytes(raw))
    _expect_error(compiled, "magic")


def test_real_hailo_hef_is_recognised():
    real = SHARED / "hef" / "mnist_cnn.hef"
    if not real.exists():
        pytest.skip("shared/data/hef/mnist_cnn.hef not present")
    with pytest.raises(ehef.RealHefError, match="Hailo device and HailoRT"):
        ehef.load(real)


def test_stream_records_are_the_description(compiled, fitted_qnet):
    """The JSON records and the HefInfo the runtime reports say the same."""
    m = ehef.load(compiled)
    (i,), (o,) = m.info.network_groups[0].inputs, m.info.network_groups[0].outputs
    assert (i.name, i.format.type.name, i.format.order.name, i.shape) == \
        ("net/input_layer1", "UINT8", "NHWC", (28, 28, 1))
    assert (o.name, o.format.order.name, o.shape, o.quant_info.qp_zp) == \
        ("net/fc3", "NC", (10,), float(fitted_qnet.output.out_zp + 128))

