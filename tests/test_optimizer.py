"""The optimizer's controls each change what they claim: ranges, bias correction, fine-tune, weights, selection."""

import numpy as np
import pytest

from hailopipe import network
from hailopipe.engine import Engine, quantize_input
from hailopipe.errors import PipelineError
from hailopipe.formats import hn, qnpz
from hailopipe.quantization import arithmetic, calibration, model_script, noise, optimizer
from hailopipe.quantization.config import FinetuneConfig, OptimizeConfig


@pytest.fixture(scope="module")
def calib(val_raw):
    return val_raw[:200]


def normalized(net):
    """`net` with the model script's default normalization: raw pixels in, as the quantized network."""
    return optimizer.with_normalization(net, OptimizeConfig())


def output_error(net, qnet, raw) -> np.ndarray:
    """Dequantized engine output minus float output, [N, 10], for raw pixels."""
    q = Engine(qnet).run(arithmetic.quantize(raw, qnet.input_scale, qnet.input_zp, qnet.input_bits))
    return arithmetic.dequantize(q, qnet.output.out_scale, qnet.output.out_zp) - network.forward(normalized(net), raw)


def with_outliers(rng, n=5000):
    v = rng.standard_normal(n)
    v[:5] = [40.0, -35.0, 55.0, 60.0, -50.0]
    return v


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_clipping_narrows_the_range_on_data_with_outliers(method, seed):
    v = with_outliers(np.random.default_rng(seed))
    lo, hi = arithmetic.percentile_range(v, 0.1, 99.9) if method == "percentile" else arithmetic.mse_range(v, 8)
    mm_lo, mm_hi = arithmetic.minmax_range(v)
    assert mm_lo < lo < 0 < hi < mm_hi
    if method == "percentile":
        assert hi - lo < 0.2 * (mm_hi - mm_lo)


def test_mse_range_keeps_outliers_when_the_step_is_fine_enough():
    """At 16 bits rounding costs almost nothing, so clamping a 60 to save it never pays: min/max wins."""
    v = with_outliers(np.random.default_rng(0))
    assert arithmetic.mse_range(v, 16) == arithmetic.minmax_range(v)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("data", ["outliers", "uniform", "relu"])
def test_mse_range_is_no_worse_than_minmax_or_percentile(data, bits):
    rng = np.random.default_rng(7)
    v = {"outliers": with_outliers(rng), "uniform": rng.uniform(-1, 3, 5000),
         "relu": np.maximum(rng.standard_normal(5000), 0)}[data]

    def mse(r):
        return np.mean((arithmetic.fake_quantize(v, *r, bits) - v) ** 2)

    best = mse(arithmetic.mse_range(v, bits))
    assert best <= mse(arithmetic.minmax_range(v)) and best <= mse(arithmetic.percentile_range(v, 0.01, 99.99))
    if data == "uniform":  # nothing to clip: the search keeps (almost) the whole range
        assert arithmetic.mse_range(v, bits)[1] >= 0.95 * v.max()


def test_percentile_mode_narrows_network_ranges_when_calibration_has_outliers(fitted_net, calib):
    bright = np.full((1, 28, 28, 1), 255, np.float32)  # one all-white image: far larger activations than digits
    x = np.concatenate([calib, bright])
    wide = calibration.ranges(normalized(fitted_net), x, OptimizeConfig())
    clipped = calibration.ranges(normalized(fitted_net), x, OptimizeConfig(clipping_mode="percentile",
                                                                           clipping_values=(0.0, 99.9)))
    for (lo, hi), (c_lo, c_hi) in zip(wide, clipped):
        assert c_hi - c_lo < hi - lo
    q = optimizer.quantize_network(fitted_net, x, OptimizeConfig(clipping_mode="percentile", clipping_values=(0.0, 99.9)))
    assert [layer.limvals for layer in q.layers] == [tuple(map(float, r)) for r in clipped]


@pytest.mark.parametrize("precision", [{}, {"fc3": "a16_w16"}])
@pytest.mark.parametrize("per_channel", [True, False])
def test_bias_correction_moves_the_mean_output_error_toward_zero(fitted_net, calib, per_channel, precision):
    errs = {}
    for level in (0, 1):
        cfg = OptimizeConfig(optimization_level=level, per_channel=per_channel, precision=precision)
        q = optimizer.quantize_network(fitted_net, calib, cfg)
        errs[level] = np.abs(output_error(fitted_net, q, calib).mean(axis=0)).mean()
    assert errs[1] < 0.5 * errs[0]


def test_bias_correction_leaves_no_mean_pre_activation_error(fitted_net, calib):
    q = optimizer.quantize_network(fitted_net, calib, OptimizeConfig(optimization_level=1, per_channel=False))
    f_outs = network.forward(normalized(fitted_net), calib, collect=True)[1]
    q_outs = noise.quantized_layer_outputs(q, quantize_input(q, calib))
    q_ins = [quantize_input(q, calib)] + q_outs[:-1]
    f_ins = [normalized(fitted_net).normalization.apply(calib).reshape(len(calib), -1)] + f_outs[:-1]
    for layer, d, q_in, f_in in zip(q.layers, fitted_net.layers, q_ins, f_ins):
        err = optimizer.bias_error(layer, q_in, d, f_in)
        unit = layer.in_scale * layer.w_scale.astype(np.float64)  # one step of the integer bias
        assert (np.abs(err) <= 0.5 * unit + 1e-9).all()


@pytest.mark.parametrize("per_channel", [True, False])
def test_finetune_lowers_the_output_error_on_the_calibration_set(fitted_net, calib, per_channel):
    mse = {}
    for level in (0, 2):
        cfg = OptimizeConfig(optimization_level=level, per_channel=per_channel, precision={"fc3": "a16_w16"})
        mse[level] = np.mean(output_error(fitted_net, optimizer.quantize_network(fitted_net, calib, cfg), calib) ** 2)
    assert mse[2] < 0.95 * mse[0]


def test_level_two_is_deterministic(fitted_net, calib):
    cfg = OptimizeConfig(optimization_level=2, finetune=FinetuneConfig(epochs=2))
    a, b = (qnpz.to_arrays(optimizer.quantize_network(fitted_net, calib, cfg)) for _ in range(2))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_finetune_keeps_the_float_network_unchanged(fitted_net, calib):
    before = {k: v.copy() for k, v in hn.weights(fitted_net).items()}
    optimizer.quantize_network(fitted_net, calib, OptimizeConfig(optimization_level=2, finetune=FinetuneConfig(epochs=1)))
    assert all(np.array_equal(before[k], v) for k, v in hn.weights(fitted_net).items())


@pytest.mark.parametrize("per_channel", [True, False])
def test_weights_mode(fitted_net, calib, per_channel):
    q = optimizer.quantize_network(fitted_net, calib, OptimizeConfig(per_channel=per_channel))
    for layer in q.layers:
        assert (len(set(layer.w_scale.tolist())) == 1) != per_channel
        if per_channel:
            assert (np.abs(layer.kernel).max(axis=0) == 127).all()
    err = {pc: sum(np.abs(layer.kernel * layer.w_scale - d.kernel).sum() for layer, d in zip(
        optimizer.quantize_network(fitted_net, calib, OptimizeConfig(per_channel=pc)).layers, fitted_net.layers))
        for pc in (True, False)}
    assert err[True] < err[False]


def test_level_zero_minmax_ranges_are_the_float_extremes(fitted_net, calib):
    q = optimizer.quantize_network(fitted_net, calib, OptimizeConfig())
    outs = network.forward(normalized(fitted_net), calib, collect=True)[1]
    assert [layer.limvals for layer in q.layers] == [(float(o.min()), float(o.max())) for o in outs]
    _, blas = network.forward(normalized(fitted_net), calib, collect=True, exact=False)  # the same math, summed by BLAS
    for o, b in zip(outs, blas):
        np.testing.assert_allclose(o, b, rtol=0, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("selection,seed", [("first", 0), ("random", 0), ("random", 5)])
def test_calibration_indices(selection, seed):
    idx = calibration.indices(1000, 64, selection, seed)
    assert len(idx) == 64 == len(set(idx.tolist())) and (np.diff(idx) > 0).all() and idx.max() < 1000
    assert np.array_equal(idx, calibration.indices(1000, 64, selection, seed))
    if selection == "first":
        assert idx.tolist() == list(range(64))
    else:
        assert idx.tolist() != list(range(64))
        assert not np.array_equal(idx, calibration.indices(1000, 64, selection, seed + 1))


@pytest.mark.parametrize("args,message", [
    ((1000, 0, "first", 0), "calibration size must be between 1 and 1000, got 0"),
    ((1000, 1001, "random", 0), "calibration size must be between 1 and 1000, got 1001"),
    ((1000, 10, "last", 0), "calibration selection must be one of first, random, got 'last'")])
def test_calibration_indices_errors(args, message):
    with pytest.raises(PipelineError, match=message):
        calibration.indices(*args)


@pytest.mark.parametrize("cfg,message", [
    (OptimizeConfig(precision={"fc9": "a16_w16"}), r"^precision names unknown layer\(s\) \['fc9'\]"),
    (OptimizeConfig(precision={"fc1": "a4_w4"}), "^precision mode 'a4_w4' of layer fc1"),
    (OptimizeConfig(optimization_level=3), r"^optimization_level must be one of \(0, 1, 2\), got 3"),
    (OptimizeConfig(clipping_mode="kl"), "^clipping_mode must be one of minmax, percentile, mse"),
    (OptimizeConfig(clipping_values=(5.0, 101.0)), "^clipping_values must be"),
])
def test_bad_config_is_one_clear_error(fitted_net, calib, cfg, message):
    with pytest.raises(PipelineError, match=message):
        optimizer.quantize_network(fitted_net, calib, cfg)


@pytest.mark.parametrize("bad", [np.zeros((3, 28, 28)), np.full((2, 28, 28, 1), np.nan, np.float32)])
def test_bad_calibration_data(fitted_net, bad):
    with pytest.raises(PipelineError, match="calibration data"):
        optimizer.quantize_network(fitted_net, bad, OptimizeConfig())


BASE = ["normalization1 = normalization([0], [255])",
        "model_optimization_flavor(optimization_level={level}, compression_level=0)",
        "model_optimization_config(calibration, batch_size=8, calibset_size=64)"]


@pytest.mark.parametrize("cfg,expected", [
    (OptimizeConfig(calib_size=64), BASE + [
        "pre_quantization_optimization(equalization, policy=disabled)",
        "post_quantization_optimization(bias_correction, policy=disabled)",
        "post_quantization_optimization(finetune, policy=disabled)",
        "# weights: per_channel symmetric (no model-script command selects this in the SDK)"]),
    (OptimizeConfig(calib_size=64, optimization_level=1, precision={"fc3": "a16_w16"}, per_channel=False,
                    clipping_mode="percentile", clipping_values=(0.01, 99.7)), BASE + [
        "quantization_param(net/fc3, precision_mode=a16_w16)",
        "pre_quantization_optimization(equalization, policy=disabled)",
        "pre_quantization_optimization(activation_clipping, layers=[net/fc1, net/fc2, net/fc3], "
        "mode=percentile, clipping_values=[0.01, 99.7])",
        "post_quantization_optimization(bias_correction, policy=enabled)",
        "post_quantization_optimization(finetune, policy=disabled)",
        "# weights: per_tensor symmetric (no model-script command selects this in the SDK)"]),
    (OptimizeConfig(calib_size=64, optimization_level=2, finetune=FinetuneConfig(4, 1e-05, 32)), BASE + [
        "pre_quantization_optimization(equalization, policy=disabled)",
        "post_quantization_optimization(bias_correction, policy=disabled)",
        "post_quantization_optimization(finetune, policy=enabled, learning_rate=1e-05, epochs=4, batch_size=32, "
        "dataset_size=64, loss_types=[l2], loss_layer_names=[net/fc3])",
        "# weights: per_channel symmetric (no model-script command selects this in the SDK)"]),
])
def test_model_script_spells_every_control(small_net, cfg, expected):
    lines = model_script.render(small_net, cfg).splitlines()
    assert lines == [layer.format(level=cfg.optimization_level) for layer in expected]


def test_model_script_writes_mse_ranges_as_manual_clipping(small_net):
    cfg = OptimizeConfig(calib_size=64, clipping_mode="mse")
    assert any(line.startswith("# activation_clipping: MSE") for line in model_script.render(small_net, cfg).splitlines())
    ranges = [(0.0, 1.5), (0.0, 2.25), (-3.125, 4.0)]
    lines = model_script.render(small_net, cfg, ranges).splitlines()
    assert [line for line in lines if "activation_clipping" in line] == [
        "pre_quantization_optimization(activation_clipping, layers=[net/fc1], mode=manual, clipping_values=[0, 1.5])",
        "pre_quantization_optimization(activation_clipping, layers=[net/fc2], mode=manual, clipping_values=[0, 2.25])",
        "pre_quantization_optimization(activation_clipping, layers=[net/fc3], mode=manual, "
        "clipping_values=[-3.125, 4])"]


@pytest.mark.parametrize("integer_b", [False, True])
@pytest.mark.parametrize("k", [1, 3, 784, 4096])
def test_exact_dot_is_close_and_independent_of_summation_order(k, integer_b):
    rng = np.random.default_rng(k)
    a = rng.standard_normal((40, k)) * rng.uniform(0.001, 10, k)
    b = rng.integers(-32768, 32768, (k, 7)).astype(np.float64) if integer_b else rng.standard_normal((k, 7)).astype(np.float32)
    got = arithmetic.exact_dot(a, b, b_is_integer=integer_b)
    ref = a @ b.astype(np.float64)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(a).max() * np.abs(b).max() * np.sqrt(k)
    perm = rng.permutation(k)
    assert np.array_equal(got, arithmetic.exact_dot(a[:, perm], b[perm], b_is_integer=integer_b))


def test_statistics_do_not_depend_on_the_blas_summation_order(fitted_net, calib):
    """Reordering the input pixels and the kernel rows alike changes every BLAS sum order, not the result."""
    perm = np.random.default_rng(0).permutation(784)
    shuffled = network.Network(fitted_net.name, fitted_net.input_shape, [
        network.Dense(d.name, d.kernel[perm] if i == 0 else d.kernel, d.bias, d.activation)
        for i, d in enumerate(fitted_net.layers)])
    x2 = calib.reshape(len(calib), -1)[:, perm].reshape(calib.shape)
    for a, b in zip(network.forward(fitted_net, calib, collect=True)[1], network.forward(shuffled, x2, collect=True)[1]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_bias_correction_and_finetune_are_never_enabled_together(small_net, level):
    """The Model Zoo's practice (every script enabling one disables the other); `applied` says which ran."""
    cfg = OptimizeConfig(optimization_level=level)
    enabled = {line.split("(")[1].split(",")[0] for line in model_script.render(small_net, cfg).splitlines()
               if line.startswith("post_quantization_optimization") and "policy=enabled" in line}
    applied = optimizer.applied(cfg)
    assert enabled == {name for name in ("bias_correction", "finetune") if applied[name]}
    assert len(enabled) == min(level, 1)


@pytest.mark.parametrize("mean,std", [((0.0,), (255.0,)), ((127.5,), (127.5,)), ((33.3,), (78.5,))])
def test_the_normalization_layer_maps_raw_pixels_to_the_model_domain(fitted_net, calib, mean, std):
    """The input stream takes raw pixels with identity qparams; the normalization layer's integers are
    what quantizing (raw - mean) / std directly gives, within one step (exactly, for [0], [255])."""
    cfg = OptimizeConfig(normalization=(mean, std))
    q = optimizer.quantize_network(fitted_net, calib, cfg)
    assert (q.input_scale, q.input_zp - arithmetic.qrange(8)[0], q.input_limvals) == (1.0, 0, (0.0, 255.0))
    assert q.normalization.name == "normalization1" and q.layers[0].in_scale == q.normalization.out_scale
    pixels = np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1)
    got = quantize_input(q, pixels).astype(np.int64)
    direct = arithmetic.quantize((pixels.reshape(1, -1) - mean[0]) / std[0], q.normalization.out_scale,
                                 q.normalization.out_zp, 8).astype(np.int64)
    assert np.abs(got - direct).max() <= (0 if std == (255.0,) else 1)
    lo, hi = optimizer.model_domain(cfg)
    assert q.normalization.limvals == (lo, hi) and (lo, hi) == (-mean[0] / std[0], (255 - mean[0]) / std[0])


def test_the_default_normalization_is_the_identity_in_integers(fitted_qnet):
    from hailopipe.engine.engine import normalization_table

    assert normalization_table(fitted_qnet.normalization) is None


@pytest.mark.parametrize("cfg", [OptimizeConfig(normalization=((0.0, 1.0), (255.0, 255.0))),
                                 OptimizeConfig(normalization=((0.0,), (0.0,))),
                                 OptimizeConfig(normalization=((), ()))])
def test_bad_normalization_is_one_clear_error(fitted_net, calib, cfg):
    with pytest.raises(PipelineError, match="^normalization"):
        optimizer.quantize_network(fitted_net, calib, cfg)
