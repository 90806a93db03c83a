"""The integer engine against an independent int64 reference, on random networks and inputs."""

import numpy as np
import pytest

from hailopipe import optimizer, quant
from hailopipe.engine import Engine
from tests.conftest import random_network


def reference(qnet, q_in: np.ndarray) -> np.ndarray:
    """Plain int64 arithmetic, straight from the derivation: sum (q_x - z_x) q_w + q_b, then M."""
    x = q_in.reshape(len(q_in), -1).astype(np.int64)
    for l in qnet.layers:
        acc = (x - l.in_zp) @ l.kernel.astype(np.int64) + l.bias.astype(np.int64)
        m0, e = l.m0.astype(np.int64), l.shift.astype(np.int64)
        y = l.out_zp + ((acc * m0 + (np.int64(1) << (e - 1))) >> e)
        qmin, qmax = quant.qrange(l.out_bits)
        y = np.clip(y, qmin, qmax)
        if l.activation == "relu":
            y = np.maximum(y, l.out_zp)
        x = y
    return x


def make_qnet(hidden, seed, precision, per_channel, wide=False):
    net = random_network(hidden, seed, scale=0.5 if wide else 0.1)
    calib = np.random.default_rng(seed).uniform(0, 1, (64, 28, 28, 1)).astype(np.float32)
    cfg = optimizer.OptimizeConfig(calib_size=64, per_channel=per_channel, precision=precision)
    return optimizer.quantize_network(net, calib, cfg)


CASES = [((32, 16), {}, True), ((64,), {}, False), ((128, 64), {"dense3": "a16_w16"}, True),
         ((48, 24), {"dense1": "a16_w16", "dense2": "a16_w16", "dense3": "a16_w16"}, True),
         ((1100, 8), {}, True)]


@pytest.mark.parametrize("hidden,precision,per_channel", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_engine_equals_int64_reference(hidden, precision, per_channel, seed):
    qnet = make_qnet(hidden, seed, precision, per_channel)
    rng = np.random.default_rng(100 + seed)
    q_in = rng.integers(-128, 128, (257, 28, 28, 1)).astype(np.int8)
    extremes = np.stack([np.full((28, 28, 1), -128, np.int8), np.full((28, 28, 1), 127, np.int8),
                         np.where(rng.random((28, 28, 1)) < 0.5, -128, 127).astype(np.int8)])
    q_in = np.concatenate([q_in, extremes])
    got = Engine(qnet).run(q_in)
    assert got.dtype == quant.storage_dtype(qnet.output.out_bits)
    np.testing.assert_array_equal(got.astype(np.int64), reference(qnet, q_in))


def test_extreme_weights_and_inputs_stay_exact():
    """All weights at ±127 and inputs at ±128: the largest accumulators the format allows."""
    qnet = make_qnet((1032,), 3, {}, True)
    for l in qnet.layers:
        l.kernel[...] = np.where(np.arange(l.kernel.size).reshape(l.kernel.shape) % 2, 127, -127)
    q_in = np.stack([np.full((28, 28, 1), v, np.int8) for v in (-128, 127)])
    np.testing.assert_array_equal(Engine(qnet).run(q_in).astype(np.int64), reference(qnet, q_in))


def test_engine_is_deterministic_and_batch_independent():
    qnet = make_qnet((64, 32), 5, {}, True)
    q_in = np.random.default_rng(7).integers(-128, 128, (100, 28, 28, 1)).astype(np.int8)
    e = Engine(qnet)
    whole = e.run(q_in)
    assert (whole == e.run(q_in)).all()
    singles = np.concatenate([e.run(q_in[i:i + 1]) for i in range(100)])
    assert (singles == whole).all()
