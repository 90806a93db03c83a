"""A convolutional network through optimize, the archive's arrays, the compiled file, the runtime and
noise analysis: the engine's whole-network run equals the layer-by-layer steps, bit for bit."""

import numpy as np
import pytest

from hailopipe import network
from hailopipe.engine import Engine
from hailopipe.formats import ehef, qnpz
from hailopipe.network import Conv, Dense, Network, Pool
from hailopipe.quantization import arithmetic, noise, optimizer
from hailopipe.quantization.config import OptimizeConfig
from hailopipe.runtime import HEF, InferModel


def cnn(seed=0, depthwise=False, pool="avg") -> Network:
    """conv 3x3 SAME relu -> maxpool 2 -> conv (or dw) 3x3 VALID relu6 -> pool 2 -> dense 10."""
    rng = np.random.default_rng(seed)

    def w(*shape, fan):
        return (rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32)

    c2 = Conv("dw1", w(3, 3, 8, 1, fan=9), w(8, fan=4), padding="VALID", activation="relu6", depthwise=True) \
        if depthwise else Conv("conv2", w(3, 3, 8, 16, fan=72), w(16, fan=4), padding="VALID", activation="relu6")
    c = 8 if depthwise else 16
    return Network("net", (28, 28, 1), [
        Conv("conv1", w(3, 3, 1, 8, fan=9) * 30, w(8, fan=4), padding="SAME_TENSORFLOW", activation="relu"),
        Pool("maxpool1", "max", (2, 2), (2, 2)),
        c2,
        Pool(f"{pool}pool1" if pool == "avg" else "maxpool2", pool, (2, 2), (2, 2), "SAME_TENSORFLOW"),
        Dense("fc1", w(6 * 6 * c, 10, fan=6 * 6 * c), w(10, fan=4))])


@pytest.fixture(scope="module")
def raw(val_raw):
    return val_raw[:64]


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("depthwise,pool", [(False, "avg"), (True, "max")])
def test_the_engine_runs_a_cnn_as_its_layers_step(raw, level, depthwise, pool):
    net = cnn(depthwise=depthwise, pool=pool)
    q = optimizer.quantize_network(net, raw, OptimizeConfig(calib_size=64, optimization_level=level))
    assert [type(layer).__name__ for layer in q.layers] == ["QConv", "QPool", "QConv", "QPool", "QDense"]
    u = raw.astype(np.uint8)
    whole = Engine(q).run_stream(u)
    steps = noise.quantized_layer_outputs(q, arithmetic.from_unsigned(u.reshape(len(u), -1), 8))
    assert np.array_equal(arithmetic.to_unsigned(steps[-1], 8), whole)
    assert np.array_equal(Engine(q, kernel="numpy").run_stream(u), whole)


def test_a_cnn_survives_its_arrays_and_the_compiled_file(raw, tmp_path):
    net = cnn()
    q = optimizer.quantize_network(net, raw, OptimizeConfig(calib_size=64, optimization_level=1))
    arrays = qnpz.to_arrays(q)
    back = qnpz.from_arrays(arrays, optimizer.with_normalization(net, OptimizeConfig()), "x.q.npz")
    again = qnpz.to_arrays(back)
    assert arrays.keys() == again.keys() and all(np.array_equal(arrays[k], again[k]) for k in arrays)
    path = tmp_path / "m.hef"
    path.write_bytes(ehef.compile_network(q, "hailo8"))
    model = InferModel(HEF(path))
    u = raw.astype(np.uint8)
    assert np.array_equal(model.run_raw(u), Engine(q).run_stream(u))
    report = ehef.layer_report(q)["layers"]
    assert report["conv1"]["macs"] == 28 * 28 * 8 * 9 and report["conv1"]["output_shape"] == [28, 28, 8]
    assert report["maxpool1"]["output_shape"] == [14, 14, 8] and report["fc1"]["input_shape"] == [576]


def test_bias_correction_helps_a_cnn(raw):
    net = cnn()
    err = {}
    for level in (0, 1):
        q = optimizer.quantize_network(net, raw, OptimizeConfig(calib_size=64, optimization_level=level))
        out = arithmetic.dequantize(Engine(q).run(arithmetic.quantize(raw, 1.0, -128, 8)), q.output.out_scale,
                                    q.output.out_zp)
        ref = network.forward(optimizer.with_normalization(net, OptimizeConfig()), raw)
        err[level] = np.abs((out - ref).mean(axis=0)).mean()
    assert err[1] < err[0]


def test_noise_analysis_covers_every_cnn_layer(raw):
    net = cnn()
    q = optimizer.quantize_network(net, raw, OptimizeConfig(calib_size=64))
    result = noise.analyze(optimizer.with_normalization(net, OptimizeConfig()), q, raw)
    assert list(result["layers"]) == ["conv1", "maxpool1", "conv2", "avgpool1", "fc1"]
    assert all(20 < v["snr_db"] < 80 for v in result["layers"].values())
    assert result["layers"]["maxpool1"]["precision"] == "a8"


@pytest.mark.parametrize("clipping", ["minmax", "mse"])
def test_the_emulator_backend_runs_a_cnn_from_its_har(raw, tmp_path, clipping):
    """parse's HAR -> optimize -> compile -> evaluate's views, through the backend the stages call."""
    from hailopipe import backends
    from hailopipe.formats import har

    net = cnn()
    har.save(har.Har("hailo_model", net, metadata={"hw_arch": "hailo8"}), tmp_path / "m.har")
    opt = backends.get("emulator", "optimize")
    assert opt.layer_names(tmp_path / "m.har") == ["conv1", "conv2", "fc1"]  # pools take no precision mode
    cfg = OptimizeConfig(calib_size=64, optimization_level=2, clipping_mode=clipping, precision={"conv2": "a16_w16"})
    summary = opt.optimize(tmp_path / "m.har", tmp_path / "q.har", raw, cfg, "hailo8")
    assert summary["applied"]["finetune"] and summary["layers"]["maxpool1"]["limvals"] is None
    script = har.load(tmp_path / "q.har").metadata["model_script"]
    assert "quantization_param(net/conv2, precision_mode=a16_w16)" in script and "maxpool1" not in script
    report = backends.get("emulator", "compile").compile(tmp_path / "q.har", tmp_path / "m.hef", "hailo8")
    assert list(report["layers"]) == ["normalization1", "conv1", "maxpool1", "conv2", "avgpool1", "fc1"]
    ev = backends.get("emulator", "evaluate")
    compiled, quantized = ev.infer_compiled(tmp_path / "m.hef", raw), ev.infer_quantized(tmp_path / "q.har", raw)
    assert compiled.shape == (64, 10) and np.array_equal(compiled, quantized)
