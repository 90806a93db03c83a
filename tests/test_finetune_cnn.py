"""Level 2's fine-tune (`finetune.finetune`) on convolutional networks: it lowers the distillation
error, gives the same bytes on every BLAS setting, its backward pass is the gradient of its forward
pass, and a network of Dense layers is fine-tuned exactly as before (the committed version).

Run as a script (`python tests/test_finetune_cnn.py`) it prints the digest of a fine-tune of the
small CNN: the bit-reproducibility test runs it in fresh processes under several BLAS settings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hailopipe import network
from hailopipe.network import Conv, Dense, Pool
from hailopipe.quantization import arithmetic, finetune
from hailopipe.quantization.config import FinetuneConfig, OptimizeConfig
from hailopipe.quantization.qnetwork import window_counts

ROOT = Path(__file__).resolve().parents[1]

SAME, VALID = "SAME_TENSORFLOW", "VALID"
IN_SCALE, IN_ZP = arithmetic.choose_qparams(0.0, 1.0, 8)  # pixels / 255 on the 8-bit input
FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()


def _w(rng, *shape, scale=0.4):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _images(rng, n, shape):
    """Random images on the input's 8-bit grid (k / 255): the input quantization is lossless."""
    return (rng.integers(0, 256, (n, *shape)) / 255.0).astype(np.float32)


def small_cnn(seed: int = 0) -> network.Network:
    """conv SAME stride 1 relu -> maxpool 2x2 -> conv VALID relu -> avgpool 2x2 -> dense."""
    rng = np.random.default_rng(seed)
    return network.Network("cnn", (12, 12, 1), [
        Conv("conv1", _w(rng, 3, 3, 1, 4), _w(rng, 4, scale=0.1), (1, 1), SAME, "relu"),
        Pool("maxpool1", "max", (2, 2), (2, 2)),
        Conv("conv2", _w(rng, 3, 3, 4, 6), _w(rng, 6, scale=0.1), (1, 1), VALID, "relu"),
        Pool("avgpool1", "avg", (2, 2), (2, 2)),
        Dense("fc1", _w(rng, 24, 5), _w(rng, 5, scale=0.1)),
    ])


def perturbed(net: network.Network, seed: int, amount: float = 0.3) -> network.Network:
    """`net` with every weight moved by `amount` of its own size, at random: a teacher to distil."""
    rng = np.random.default_rng(seed)
    layers = [layer if isinstance(layer, Pool) else
              replace(layer, kernel=(layer.kernel * (1 + amount * rng.standard_normal(layer.kernel.shape))
                                     ).astype(np.float32)) for layer in net.layers]
    return replace(net, layers=layers)


def ranges_of(net: network.Network, x: np.ndarray, widen: float = 1.0):
    """Every layer's min/max output range over `x` (widened by `widen`, to avoid clamping)."""
    _, outs = network.forward(net, x, collect=True)
    return [(widen * float(o.min()), widen * float(o.max())) for o in outs]


def distillation_setup(n: int = 96, seed: int = 0):
    net = small_cnn(seed)
    x = _images(np.random.default_rng(seed + 1), n, net.input_shape)
    teacher = network.forward(perturbed(net, seed + 2), x)
    return net, x, teacher, ranges_of(net, x)


def run_small(epochs: int = 2, learning_rate: float = 3e-3, **kw) -> network.Network:
    net, x, teacher, ranges = distillation_setup(**kw)
    cfg = OptimizeConfig(optimization_level=2, finetune=FinetuneConfig(epochs, learning_rate, 16, seed=3))
    return finetune.finetune(net, x.reshape(len(x), -1), teacher, ranges, IN_SCALE, IN_ZP, cfg)


def digest(net: network.Network) -> str:
    h = hashlib.sha256()
    for layer in net.layers:
        if not isinstance(layer, Pool):
            h.update(layer.kernel.tobytes())
            h.update(layer.bias.tobytes())
    return h.hexdigest()


def distillation_mse(net, x, teacher, ranges, cfg) -> float:
    """The fake-quantized `net`'s distillation MSE over all of `x`, as the fine-tune measures it."""
    steps = finetune.plan(net, ranges, IN_SCALE, IN_ZP, cfg)
    codes = arithmetic.quantize(x, IN_SCALE, IN_ZP, 8).astype(np.float64) - IN_ZP
    params = [finetune.initial_params(layer) for layer in net.layers]
    loss, _ = finetune.gradients(steps, params, codes, IN_SCALE, teacher.reshape(len(x), -1), cfg.per_channel)
    return loss


def test_the_distillation_error_goes_down_over_the_epochs(caplog):
    net, x, teacher, ranges = distillation_setup()
    cfg = OptimizeConfig(optimization_level=2, finetune=FinetuneConfig(6, 5e-4, 16, seed=3))
    with caplog.at_level(logging.INFO, logger=finetune.log.name):
        tuned = finetune.finetune(net, x, teacher, ranges, IN_SCALE, IN_ZP, cfg)  # NHWC input
    per_epoch = [float(m) for m in re.findall(r"distillation MSE (\S+)", caplog.text)]
    assert len(per_epoch) == 6
    assert all(b < a for a, b in zip(per_epoch, per_epoch[1:])), per_epoch
    before, after = distillation_mse(net, x, teacher, ranges, cfg), distillation_mse(tuned, x, teacher, ranges, cfg)
    assert after < 0.2 * before, (before, after)
    assert [type(layer) for layer in tuned.layers] == [type(layer) for layer in net.layers]
    for old, new in zip(net.layers, tuned.layers):
        if not isinstance(old, Pool):
            assert new.kernel.shape == old.kernel.shape and new.kernel.dtype == np.float32
            assert not np.array_equal(new.kernel, old.kernel)
    assert digest(net) == digest(small_cnn(0))  # the input network is left alone


def test_flattened_and_nhwc_inputs_give_the_same_weights():
    net, x, teacher, ranges = distillation_setup(n=40)
    cfg = OptimizeConfig(optimization_level=2, finetune=FinetuneConfig(1, 3e-3, 16))
    flat = finetune.finetune(net, x.reshape(len(x), -1), teacher, ranges, IN_SCALE, IN_ZP, cfg)
    assert digest(flat) == digest(finetune.finetune(net, x, teacher, ranges, IN_SCALE, IN_ZP, cfg))


def blas_variants() -> dict[str, dict]:
    variants = {"default": {}, "one BLAS thread": {"OPENBLAS_NUM_THREADS": "1"},
                "two BLAS threads": {"OPENBLAS_NUM_THREADS": "2"}}
    for core, needs in (("Sandybridge", {"avx"}), ("Nehalem", {"sse4_2"})):  # other GEMM kernels (no FMA)
        if needs <= FLAGS:
            variants[f"OPENBLAS_CORETYPE={core}"] = {"OPENBLAS_CORETYPE": core}
    return variants


def test_the_same_bytes_twice_and_under_every_blas_setting():
    here = reproduced()
    assert reproduced() == here
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
    results = {}
    for name, extra in blas_variants().items():
        p = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600,
                           env={**env, **extra, "PYTHONPATH": str(ROOT)})
        assert p.returncode == 0, (name, p.stderr[-3000:])
        results[name] = p.stdout.split()[-1]
    assert len(results) >= 3 and set(results.values()) == {here}, results


# --- the backward pass is the gradient of the forward pass ---------------------------------------

def tiny_cnn(seed: int = 5) -> network.Network:
    """Every option: SAME conv, dilated VALID conv, depthwise stride 2 SAME relu6 on an odd size,
    SAME max pool, SAME average pool stride 2 (border windows count fewer inputs), then dense."""
    rng = np.random.default_rng(seed)
    return network.Network("tiny", (9, 9, 2), [
        Conv("conv1", _w(rng, 3, 3, 2, 4, scale=0.6), _w(rng, 4, scale=0.2), (1, 1), SAME, "relu"),
        Conv("conv2", _w(rng, 2, 2, 4, 3, scale=0.8), _w(rng, 3, scale=0.2), (1, 1), VALID, "linear",
             dilations=(2, 2)),
        Conv("dw1", _w(rng, 3, 3, 3, 1, scale=1.5), _w(rng, 3, scale=0.5), (2, 2), SAME, "relu6", depthwise=True),
        Pool("maxpool1", "max", (2, 2), (1, 1), SAME),
        Pool("avgpool1", "avg", (3, 3), (2, 2), SAME),
        Dense("fc1", _w(rng, 12, 5), _w(rng, 5, scale=0.2)),
    ])


def float_loss(net: network.Network, x: np.ndarray, target: np.ndarray) -> float:
    """The distillation MSE of the unquantized network, in float64 (a reference written apart)."""
    h = x.astype(np.float64)
    for layer in net.layers:
        if isinstance(layer, Dense):
            h = network.apply_activation(h.reshape(len(h), -1) @ layer.kernel.astype(np.float64) + layer.bias,
                                         layer.activation)
        elif isinstance(layer, Conv):
            kh, kw = layer.kernel.shape[:2]
            win = network.patches(h, (kh, kw), layer.strides, layer.padding, layer.dilations)
            z = win.reshape(*win.shape[:3], -1) @ network.conv_kernel(layer).astype(np.float64) + layer.bias
            h = network.apply_activation(z, layer.activation)
        elif layer.kind == "max":
            h = network.patches(h, layer.size, layer.strides, layer.padding, pad_value=-np.inf).max(axis=(3, 4))
        else:
            counts = window_counts(h.shape[1:], layer.size, layer.strides, layer.padding)[:, :, None]
            h = network.patches(h, layer.size, layer.strides, layer.padding).sum(axis=(3, 4)) / counts
    return float(np.mean((h.reshape(len(x), -1) - target) ** 2))


def test_the_backward_pass_matches_finite_differences_of_the_float_forward():
    net = tiny_cnn()
    rng = np.random.default_rng(6)
    x = _images(rng, 4, net.input_shape)
    target = rng.standard_normal((4, 5))
    # 16-bit activations and weights with ranges that clamp nothing: the fake-quantized network is
    # the float one to ~2^-15, and the straight-through gradient is its gradient
    cfg = OptimizeConfig(precision={layer.name: "a16_w16" for layer in net.layers if not isinstance(layer, Pool)})
    steps = finetune.plan(net, ranges_of(net, x, widen=1.5), IN_SCALE, IN_ZP, cfg)
    codes = arithmetic.quantize(x, IN_SCALE, IN_ZP, 8).astype(np.float64) - IN_ZP
    params = [finetune.initial_params(layer) for layer in net.layers]
    _, outs = network.forward(net, x, collect=True)
    assert (outs[2] == 6).mean() > 0.05 and (outs[2] == 0).mean() > 0.05  # relu6 clamps at both ends
    loss, grads = finetune.gradients(steps, params, codes, IN_SCALE, target, cfg.per_channel)
    assert loss == pytest.approx(float_loss(net, x, target), rel=1e-3)
    eps = 1e-5
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Pool):
            assert grads[i] is None
            continue
        for j, name in enumerate(("kernel", "bias")):
            value = getattr(layer, name).astype(np.float64)
            numeric = np.zeros(value.size)
            for k in range(value.size):
                loss_at = []
                for sign in (1, -1):
                    moved = value.ravel().copy()
                    moved[k] += sign * eps
                    changed = replace(layer, **{name: moved.reshape(value.shape)})
                    loss_at.append(float_loss(replace(net, layers=[*net.layers[:i], changed, *net.layers[i + 1:]]),
                                              x, target))
                numeric[k] = (loss_at[0] - loss_at[1]) / (2 * eps)
            analytic = grads[i][j].reshape(value.shape).ravel()
            assert np.abs(numeric).max() > 0, (layer.name, name)
            np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=2e-3 * np.abs(numeric).max(),
                                       err_msg=f"{layer.name} {name}")


def test_clamped_outputs_stop_the_gradient():
    """A range that clamps every output of the first layer: no gradient reaches its weights."""
    net = tiny_cnn()
    rng = np.random.default_rng(7)
    x = _images(rng, 2, net.input_shape)
    ranges = ranges_of(net, x)
    ranges[0] = (0.0, 1e-6)
    cfg = OptimizeConfig()
    steps = finetune.plan(net, ranges, IN_SCALE, IN_ZP, cfg)
    codes = arithmetic.quantize(x, IN_SCALE, IN_ZP, 8).astype(np.float64) - IN_ZP
    params = [finetune.initial_params(layer) for layer in net.layers]
    _, grads = finetune.gradients(steps, params, codes, IN_SCALE, rng.standard_normal((2, 5)), cfg.per_channel)
    assert np.all(grads[0][0] == 0) and np.any(grads[1][0] != 0)


def test_max_pooling_sends_a_tie_to_the_first_of_the_window():
    """Pixel p carries channel p alone; a 1x1 conv of ones ties three of them under a 2x2 max:
    the gradient goes to the first in (row, column) order, (0, 1), so only channel 1's weight learns."""
    net = network.Network("tie", (2, 2, 4), [
        Conv("conv1", np.ones((1, 1, 4, 1), np.float32), np.zeros(1, np.float32)),
        Pool("maxpool1", "max", (2, 2), (2, 2)),
    ])
    x = np.zeros((1, 2, 2, 4), np.float32)
    for p, (i, j) in enumerate([(0, 1), (1, 0), (1, 1)], start=1):
        x[0, i, j, p] = 100 / 255
    cfg = OptimizeConfig()
    steps = finetune.plan(net, [(0.0, 1.0), (0.0, 1.0)], IN_SCALE, IN_ZP, cfg)
    codes = arithmetic.quantize(x, IN_SCALE, IN_ZP, 8).astype(np.float64) - IN_ZP
    params = [finetune.initial_params(layer) for layer in net.layers]
    _, grads = finetune.gradients(steps, params, codes, IN_SCALE, np.zeros((1, 1)), cfg.per_channel)
    kernel_grad = grads[0][0].ravel()
    assert kernel_grad[1] > 0 and np.all(kernel_grad[[0, 2, 3]] == 0), kernel_grad


@pytest.mark.parametrize("kind, size, strides, padding, bits", [
    ("avg", (3, 3), (2, 2), SAME, 8),  # border windows of 4 and 6 inputs: 1/6 and 1/9 are not exact in fixed point
    ("avg", (2, 3), (1, 2), SAME, 16),
    ("avg", (2, 2), (2, 2), VALID, 8),
    ("max", (3, 3), (2, 2), SAME, 8),
])
def test_pooling_gives_the_integer_layers_codes(kind, size, strides, padding, bits):
    from hailopipe.engine.conv import run_pool

    pool = Pool("pool1", kind, size, strides, padding)
    scale, zp = 0.02, -7 * (1 << (bits - 8))
    qmin, qmax = arithmetic.qrange(bits)
    q = np.random.default_rng(8).integers(qmin, qmax + 1, (40, 7, 9, 3)).astype(arithmetic.storage_dtype(bits))
    step = finetune.Step(pool, (7, 9, 3), network.output_shape(pool, (7, 9, 3)), bits, 0, scale, zp)  # a 16-bit input
    real, codes, _ = finetune.pool(step, q.astype(np.float64) - zp)
    layer = arithmetic.quantize_pool("pool1", kind, size, strides, padding, (7, 9, 3), bits, scale, zp)
    np.testing.assert_array_equal(codes, run_pool(layer, q).astype(np.float64) - zp)
    assert np.abs(real - codes).max() <= 0.5


# --- networks of Dense layers: exactly the committed fine-tune -------------------------------------

DENSE_ONLY = "c8390b4"  # the last commit whose finetune.py knew Dense layers only


def committed_finetune() -> types.ModuleType:
    """finetune.py as it was before it learnt conv and pool layers, from the repository's history."""
    source = f"{DENSE_ONLY}:hailopipe/quantization/finetune.py"
    p = subprocess.run(["git", "show", source], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"git history without {source} (a shallow clone)")
    module = types.ModuleType("dense_only_finetune")
    exec(compile(p.stdout, source, "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("per_channel, precision", [(True, {}), (False, {}), (True, {"fc2": "a16_w16"})])
def test_dense_networks_are_fine_tuned_exactly_as_before(per_channel, precision):
    rng = np.random.default_rng(11)
    net = network.Network("mlp", (8, 8, 1), [
        Dense("fc1", _w(rng, 64, 32, scale=0.2), _w(rng, 32, scale=0.1), "relu"),
        Dense("fc2", _w(rng, 32, 16, scale=0.3), _w(rng, 16, scale=0.1), "relu"),
        Dense("fc3", _w(rng, 16, 10, scale=0.3), _w(rng, 10, scale=0.1)),
    ])
    x = _images(rng, 150, net.input_shape).reshape(150, -1)
    teacher = network.forward(perturbed(net, 12), x)
    ranges = ranges_of(net, x)
    cfg = OptimizeConfig(per_channel=per_channel, precision=precision, optimization_level=2,
                         finetune=FinetuneConfig(3, 1e-3, 32, seed=4))
    new = finetune.finetune(net, x, teacher, ranges, IN_SCALE, IN_ZP, cfg)
    old = committed_finetune().finetune(net, x, teacher, ranges, IN_SCALE, IN_ZP, cfg)
    assert digest(new) == digest(old)
    assert digest(new) != digest(net)


def gradient_digest(net: network.Network) -> str:
    """The float64 gradients of the distillation loss over the whole set (before any float32 rounding)."""
    _, x, teacher, ranges = distillation_setup()
    cfg = OptimizeConfig()
    codes = arithmetic.quantize(x, IN_SCALE, IN_ZP, 8).astype(np.float64) - IN_ZP
    params = [finetune.initial_params(layer) for layer in net.layers]
    steps = finetune.plan(net, ranges, IN_SCALE, IN_ZP, cfg)
    _, grads = finetune.gradients(steps, params, codes, IN_SCALE, teacher, cfg.per_channel)
    return hashlib.sha256(b"".join(g.tobytes() for pair in grads if pair for g in pair)).hexdigest()


def reproduced() -> str:
    """The digest of a fine-tune of the small CNN and of the float64 gradients after it."""
    tuned = run_small()
    return digest(tuned) + gradient_digest(tuned)


if __name__ == "__main__":
    print(reproduced())
