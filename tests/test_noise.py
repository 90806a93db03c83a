"""Noise analysis: engine-exact per-layer stepping, the SNR figure, and that it sees what precision does."""

import json
import math

import numpy as np
import pytest

from hailopipe.backends.emulator import noise as emulator_noise
from hailopipe.engine import Engine, run_layer
from hailopipe.formats import har
from hailopipe.quantization import arithmetic, noise, optimizer
from hailopipe.quantization.config import OptimizeConfig
from tests.conftest import random_network

ALL16 = {"fc1": "a16_w16", "fc2": "a16_w16", "fc3": "a16_w16"}


@pytest.fixture(scope="module")
def calib(val_raw):
    return val_raw[:200]


def analyze(net, qnet, raw):
    """`noise.analyze` of `qnet` against the float `net` with the model script's normalization, on raw pixels."""
    return noise.analyze(optimizer.with_normalization(net, OptimizeConfig()), qnet, raw)


def snrs(net, qnet, x, key="snr_db"):
    return [v[key] for v in analyze(net, qnet, x)["layers"].values()]


@pytest.mark.parametrize("precision", [{}, {"fc2": "a16_w16"}, {"fc3": "a16_w16"}, ALL16])
@pytest.mark.parametrize("per_channel,hidden", [(True, (32, 16)), (False, (64, 8))])
def test_stepping_layer_by_layer_equals_the_engine_bit_for_bit(precision, per_channel, hidden):
    net = random_network(hidden, seed=3)
    rng = np.random.default_rng(4)
    qnet = optimizer.quantize_network(net, rng.uniform(0, 255, (64, 28, 28, 1)).astype(np.float32),
                                      OptimizeConfig(per_channel=per_channel, precision=precision))
    q_in = rng.integers(-128, 128, (300, 28, 28, 1)).astype(np.int8)
    outs = noise.quantized_layer_outputs(qnet, q_in)
    whole = Engine(qnet).run(q_in)
    assert outs[-1].dtype == whole.dtype and np.array_equal(outs[-1], whole)
    for layer, o in zip(qnet.layers, outs):
        assert o.dtype == arithmetic.storage_dtype(layer.out_bits) and o.shape == (300, layer.kernel.shape[1])


def test_snr_definition():
    f = np.array([3.0, -4.0, 0.0])  # signal energy 25
    assert noise.snr_db(f, f) == math.inf
    assert noise.snr_db(f, f + np.array([0.5, 0.0, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))
    assert noise.snr_db(np.zeros(3), np.ones(3)) == -math.inf


@pytest.mark.parametrize("layer", ["fc1", "fc2", "fc3"])
def test_a16_w16_on_a_layer_raises_its_snr(fitted_net, calib, layer):
    base = analyze(fitted_net, optimizer.quantize_network(fitted_net, calib, OptimizeConfig()), calib)
    wide = analyze(fitted_net, optimizer.quantize_network(
        fitted_net, calib, OptimizeConfig(precision={layer: "a16_w16"})), calib)
    # still fed 8-bit inputs, so the gain is what the layer's own weights and output rounding cost
    assert wide["layers"][layer]["isolated_snr_db"] > base["layers"][layer]["isolated_snr_db"] + 3
    assert wide["layers"][layer]["snr_db"] > base["layers"][layer]["snr_db"] + 1
    assert wide["layers"][layer]["precision"] == "a16_w16" and base["layers"][layer]["precision"] == "a8_w8"


def test_very_fine_model_scores_high_and_coarse_model_low(fitted_net, calib):
    fine = snrs(fitted_net, optimizer.quantize_network(fitted_net, calib, OptimizeConfig(precision=ALL16)), calib)
    default = snrs(fitted_net, optimizer.quantize_network(fitted_net, calib, OptimizeConfig()), calib)
    coarse_cfg = OptimizeConfig(clipping_mode="percentile", clipping_values=(0.0, 50.0))  # clamps half the values
    coarse = snrs(fitted_net, optimizer.quantize_network(fitted_net, calib, coarse_cfg), calib)
    assert min(fine) > 70 and 30 < min(default) < 60 and coarse[-1] < 10
    assert all(c < d < f for c, d, f in zip(coarse, default, fine))


def test_unquantized_layer_output_is_infinite_snr(fitted_net, calib):
    """A layer whose float outputs are exactly representable: the engine reproduces them, no noise."""
    qnet = optimizer.quantize_network(fitted_net, calib, OptimizeConfig())
    first = qnet.layers[0]
    f = arithmetic.dequantize(run_layer(first, arithmetic.quantize(calib, qnet.input_scale, qnet.input_zp, 8)),
                         first.out_scale, first.out_zp)
    assert noise.snr_db(f, f.copy()) == math.inf


def test_isolated_equals_accumulated_on_the_first_layer(fitted_net, fitted_qnet, calib):
    first = analyze(fitted_net, fitted_qnet, calib)["layers"]["fc1"]
    assert first["snr_db"] == first["isolated_snr_db"]


def test_report_is_json_safe_and_the_table_lists_every_layer(fitted_net, fitted_qnet, calib):
    result = analyze(fitted_net, fitted_qnet, calib)
    result["layers"]["fc1"]["snr_db"] = math.inf
    metrics, table = noise.report(result)
    json.dumps(metrics, allow_nan=False)
    assert metrics["layers"]["fc1"]["snr_db"] == noise.SNR_CAP_DB
    assert metrics["images"] == len(calib)
    assert metrics["min_snr_db"] == min(v["snr_db"] for v in metrics["layers"].values())
    lines = table.splitlines()
    assert lines[0] == "layer,precision,snr_db,isolated_snr_db"
    assert [line.split(",")[0] for line in lines[1:]] == ["fc1", "fc2", "fc3"]


def test_analyze_har_reads_both_archives(tmp_path, fitted_net, fitted_norm_net, fitted_qnet, calib):
    har.save(har.Har("hailo_model", fitted_net), tmp_path / "f.har")
    har.save(har.Har("quantized_model", fitted_norm_net, fitted_qnet), tmp_path / "q.har")
    got = emulator_noise.analyze_noise(tmp_path / "f.har", tmp_path / "q.har", calib)
    assert got == analyze(fitted_net, fitted_qnet, calib)
