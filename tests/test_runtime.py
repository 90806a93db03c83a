"""The HailoRT-shaped runtime API (hailopipe.runtime, on the records of hailopipe.formats.streams):
queries on emulated and real HEFs, the legacy (InferVStreams) and InferModel flows against the integer engine, and every
kind of misuse raising HailoRTException."""

import numpy as np
import pytest

from hailopipe.engine import Engine
from hailopipe.errors import PipelineError
from hailopipe.formats import ehef, har
from hailopipe.formats.ehef import RealHefError
from hailopipe.quantization import arithmetic
from hailopipe.runtime import (
    HEF,
    Format,
    FormatOrder,
    FormatType,
    HailoRTException,
    InferModel,
    InferVStreams,
    InputVStreamParams,
    OutputVStreamParams,
    VDevice,
)
from tests.conftest import ROOT

REAL_HEF = ROOT.parent / "shared/data/hef/mnist_cnn.hef"


@pytest.fixture
def hef_path(tmp_path, fitted_qnet):
    p = tmp_path / "m.hef"
    p.write_bytes(ehef.compile_network(fitted_qnet, "hailo8l"))
    return p


def test_stream_infos_match_the_header(hef_path):
    h = HEF(str(hef_path))
    meta = ehef.load(hef_path).meta
    (i,), (o,) = h.get_input_vstream_infos(), h.get_output_vstream_infos()
    assert i.name == meta["inputs"][0]["name"] and i.shape == (28, 28, 1)
    assert i.format.type == FormatType.UINT8 and i.format.order == FormatOrder.NHWC
    assert i.quant_info.qp_scale == meta["inputs"][0]["qp_scale"] and i.quant_info.qp_zp == 0
    assert o.shape == (10,) and o.format.order == FormatOrder.NC
    assert o.quant_info.qp_zp == meta["outputs"][0]["qp_zp"]
    assert h.get_network_group_names() == ["net"] and h.get_sorted_output_names() == [o.name]
    assert h.hw_arch == "hailo8l"


def test_hailort_flow_float_and_raw_agree(hef_path, val_images, val_raw):
    """FLOAT32 streams take raw pixels 0-255 (identity input qparams), as a HailoRT user passes them."""
    x, y = val_raw, val_images[1]
    h = HEF(hef_path)
    with VDevice() as target:
        ng = target.configure(h)[0]
        in_name = h.get_input_vstream_infos()[0].name
        out_name = h.get_output_vstream_infos()[0].name
        f_in = InputVStreamParams.make(ng, format_type=FormatType.FLOAT32)
        f_out = OutputVStreamParams.make(ng, format_type=FormatType.FLOAT32)
        with InferVStreams(ng, f_in, f_out) as pipe, ng.activate(ng.create_params()):
            out_f = pipe.infer({in_name: x})[out_name]
        raw_in = InputVStreamParams.make(ng, format_type=FormatType.UINT8)
        raw_out = OutputVStreamParams.make(ng, format_type=FormatType.UINT8)
        with InferVStreams(ng, raw_in, raw_out) as pipe:
            pixels = x.astype(np.uint8)
            out_u = pipe.infer(pixels)[out_name]
    assert out_f.dtype == np.float32 and out_u.dtype == np.uint8 and out_f.shape == (len(x), 10)
    q = h.get_output_vstream_infos()[0].quant_info
    np.testing.assert_array_equal(out_f, arithmetic.dequantize(out_u, q.qp_scale, q.qp_zp))
    assert (out_f.argmax(1) == y).mean() > 0.75


def test_float_input_conversion_is_hailort_rounding(hef_path):
    m = InferModel(HEF(hef_path))
    x = np.array([0.0, 0.4, 1.6, 2.5, 3.5, 255.0, 700.0, -3.0], np.float32).reshape(1, 1, 8, 1)
    assert m.quantize_input(x).ravel().tolist() == [0, 0, 2, 2, 4, 255, 255, 0]  # half to even, clipped


def test_raw_path_is_the_engine(hef_path, fitted_qnet):
    pixels = np.random.default_rng(2).integers(0, 256, (20, 28, 28, 1)).astype(np.uint8)
    got = InferModel(HEF(hef_path)).run_raw(pixels)
    want = arithmetic.to_unsigned(Engine(fitted_qnet).run(arithmetic.from_unsigned(pixels, 8)), 8)
    assert (got == want).all()


@pytest.mark.parametrize("bad,words", [
    (np.zeros((2, 28, 28), np.uint8), "shape"),
    (np.zeros((2, 784), np.uint8), "shape"),
    (np.zeros((2, 28, 28, 1), np.float32), "dtype"),
])
def test_bad_raw_inputs(hef_path, bad, words):
    with pytest.raises(HailoRTException, match=words):
        InferModel(HEF(hef_path)).run_raw(bad)


def test_bad_float_input_and_names(hef_path):
    h = HEF(hef_path)
    with VDevice() as target:
        ng = target.configure(h)[0]
        ivp = InputVStreamParams.make(ng, format_type=FormatType.FLOAT32)
        ovp = OutputVStreamParams.make(ng, format_type=FormatType.FLOAT32)
        with InferVStreams(ng, ivp, ovp) as pipe:
            with pytest.raises(HailoRTException, match="input names"):
                pipe.infer({"wrong": np.zeros((1, 28, 28, 1), np.float32)})
            with pytest.raises(HailoRTException, match="NaN"):
                InferModel(h).run_float(np.full((1, 28, 28, 1), np.nan, np.float32))


def test_single_image_without_batch_dimension(hef_path):
    m = InferModel(HEF(hef_path))
    assert m.run_float(np.zeros((28, 28, 1), np.float32)).shape == (1, 10)


# --- HailoRT query API on both kinds of file ---------------------------------------------------

def test_all_stream_info_fields_match_the_header(hef_path):
    h = HEF(hef_path)
    meta = ehef.load(hef_path).meta
    infos = h.get_all_vstream_infos()
    assert [i.direction for i in infos] == ["input", "output"]
    for info, spec in zip(infos, meta["inputs"] + meta["outputs"]):
        assert info.name == spec["name"] and info.network_name == meta["networks"][0] == "net/net"
        assert info.shape == tuple(spec["shape"]) and info.format.type == FormatType[spec["format_type"]]
        assert info.format.order == FormatOrder[spec["order"]]
        q = info.quant_info
        assert (q.qp_zp, q.qp_scale, q.limvals_min, q.limvals_max) == \
               (spec["qp_zp"], spec["qp_scale"], spec["limvals_min"], spec["limvals_max"])
    assert h.get_input_vstream_infos("net/net") == h.get_input_vstream_infos("net") == infos[:1]
    assert h.get_networks_names() == ["net/net"] and h.emulated
    assert HEF(hef_path.read_bytes()).get_all_vstream_infos() == infos
    with pytest.raises(HailoRTException, match="no network group named 'other'"):
        h.get_output_vstream_infos("other")


@pytest.fixture
def real_hef():
    if not REAL_HEF.is_file():
        pytest.skip(f"real HEF not present: {REAL_HEF}")
    return REAL_HEF


def test_real_hef_queries_but_does_not_run(real_hef):
    for h in (HEF(real_hef), HEF(str(real_hef)), HEF(real_hef.read_bytes())):
        (i,), (o,) = h.get_input_vstream_infos(), h.get_output_vstream_infos()
        assert not h.emulated and h.hw_arch == "HAILO8P" and h.get_network_group_names() == ["MNIST_CNN"]
        assert (i.name, i.shape, i.format) == ("MNIST_CNN/input_layer1", (32, 32, 1), Format(FormatType.UINT8, FormatOrder.NHWC))
        assert (o.name, o.shape, o.format.order) == ("MNIST_CNN/maxpool3", (4, 4, 16), FormatOrder.FCR)
        assert (i.quant_info.qp_scale, i.quant_info.limvals_max) == (1.0, 255.0)
        assert h.get_sorted_output_names() == ["MNIST_CNN/maxpool3"]
    with VDevice() as vd:
        with pytest.raises(RealHefError, match="needs a Hailo device and HailoRT"):
            vd.create_infer_model(str(real_hef))
        with pytest.raises(RealHefError, match="needs a Hailo device"):
            vd.configure(HEF(real_hef))


@pytest.mark.parametrize("source", ["missing", "text", "har"])
def test_hef_refuses_what_is_not_a_compiled_model(tmp_path, small_net, source):
    p = tmp_path / "x"
    if source == "text":
        p.write_text("not a model at all, just some text")
    elif source == "har":
        har.save(har.Har("hailo_model", small_net), p)
    with pytest.raises(PipelineError, match=str(p)):
        HEF(p)


# --- the InferModel flow -------------------------------------------------------------------------

def engine_raw(qnet, pixels):
    return arithmetic.to_unsigned(Engine(qnet).run(arithmetic.from_unsigned(pixels, 8)), 8)


@pytest.mark.parametrize("fmt", [FormatType.FLOAT32, FormatType.UINT8, FormatType.AUTO])
def test_infer_model_flow_is_the_engine_bit_for_bit(hef_path, fitted_qnet, val_raw, fmt):
    x = val_raw[:24]
    pixels = x.astype(np.uint8)
    want = engine_raw(fitted_qnet, pixels)
    with VDevice(VDevice.create_params()) as vd:
        im = vd.create_infer_model(str(hef_path))
        assert im.input_names == ["net/input_layer1"] and im.output_names == ["net/fc3"]
        assert im.input().shape == (28, 28, 1) and im.output().shape == (10,)
        assert im.output().quant_infos == [HEF(hef_path).get_output_vstream_infos()[0].quant_info]
        im.input().set_format_type(fmt)
        im.output().set_format_type(fmt)
        dtype = np.float32 if fmt == FormatType.FLOAT32 else np.uint8
        with im.configure() as cim:
            bindings = []
            for frame in (x if fmt == FormatType.FLOAT32 else pixels):
                b = cim.create_bindings()
                b.input().set_buffer(np.ascontiguousarray(frame))
                b.output().set_buffer(np.empty(im.output().shape, dtype))
                bindings.append(b)
            cim.run(bindings, 1000)
            got = np.stack([b.output().get_buffer() for b in bindings])
    assert got.dtype == dtype
    if fmt == FormatType.FLOAT32:
        q = im.output().quant_infos[0]
        np.testing.assert_array_equal(got, arithmetic.dequantize(want, q.qp_scale, q.qp_zp))
    else:
        np.testing.assert_array_equal(got, want)


def test_both_flows_agree_at_the_int8_extremes(hef_path, fitted_qnet):
    """Black, white and random frames, raw in and out: legacy, InferModel and engine all equal."""
    rng = np.random.default_rng(5)
    pixels = np.concatenate([np.zeros((1, 28, 28, 1), np.uint8), np.full((1, 28, 28, 1), 255, np.uint8),
                             rng.integers(0, 256, (6, 28, 28, 1)).astype(np.uint8)])
    h = HEF(hef_path)
    with VDevice() as vd:
        ng = vd.configure(h)[0]
        with InferVStreams(ng, InputVStreamParams.make(ng, format_type=FormatType.UINT8),
                           OutputVStreamParams.make(ng, format_type=FormatType.UINT8)) as pipe:
            legacy = pipe.infer(pixels)["net/fc3"]
        im = vd.create_infer_model(hef_path.read_bytes())
        with im.configure() as cim:
            bindings = [cim.create_bindings(input_buffers={"net/input_layer1": p}) for p in pixels]
            done = []
            job = cim.run_async(bindings, lambda completion_info: done.append(completion_info.exception))
            job.wait(1000)
            new = np.stack([b.output().get_buffer() for b in bindings])
    assert done == [None]
    np.testing.assert_array_equal(legacy, engine_raw(fitted_qnet, pixels))
    np.testing.assert_array_equal(new, legacy)


def test_formats_are_fixed_at_configure(hef_path):
    im = InferModel(HEF(hef_path))
    with im.configure() as cim:
        im.input().set_format_type(FormatType.FLOAT32)  # after configure: does not apply to cim
        b = cim.create_bindings()
        with pytest.raises(HailoRTException, match="buffer is float32"):
            b.input().set_buffer(np.zeros((28, 28, 1), np.float32))
        b.input().set_buffer(np.zeros((28, 28, 1), np.uint8))
        cim.run([b], 1000)
        assert b.output().get_buffer().dtype == np.uint8  # allocated when none was set


@pytest.mark.parametrize("action,words", [
    (lambda im, cim, b: b.input().set_buffer(np.zeros((28, 28), np.float32)), "needs float32 \\[28, 28, 1\\]"),
    (lambda im, cim, b: b.input().set_buffer(np.zeros((28, 28, 1), np.float64)), "buffer is float64"),
    (lambda im, cim, b: b.input().set_buffer(np.zeros((28, 56, 1), np.float32)[:, ::2]), "C_CONTIGUOUS"),
    (lambda im, cim, b: b.input().set_buffer([0.0] * 784), "numpy array"),
    (lambda im, cim, b: b.output().set_buffer(np.zeros(10, np.uint8)), "buffer is uint8"),
    (lambda im, cim, b: b.input("net/nope"), "no input stream named 'net/nope'"),
    (lambda im, cim, b: im.output("nope"), "no output stream named 'nope'"),
    (lambda im, cim, b: im.input().set_format_type(FormatType.UINT16), "UINT16 is not offered"),
    (lambda im, cim, b: im.input().set_format_order(FormatOrder.NCHW), "order NCHW is not offered"),
    (lambda im, cim, b: cim.run([b], 1000), "no buffer set"),
    (lambda im, cim, b: cim.run([], 1000), "non-empty list of Bindings"),
    (lambda im, cim, b: im.set_batch_size(0), "batch size"),
])
def test_infer_model_bad_use(hef_path, action, words):
    with VDevice() as vd:
        im = vd.create_infer_model(hef_path)
        im.input().set_format_type(FormatType.FLOAT32)
        im.output().set_format_type(FormatType.FLOAT32)
        with im.configure() as cim:
            with pytest.raises(HailoRTException, match=words):
                action(im, cim, cim.create_bindings())


def test_nan_and_use_after_close(hef_path):
    vd = VDevice()
    im = vd.create_infer_model(hef_path)
    im.input().set_format_type(FormatType.FLOAT32)
    with im.configure() as cim:
        b = cim.create_bindings(input_buffers={"net/input_layer1": np.full((28, 28, 1), np.nan, np.float32)})
        with pytest.raises(HailoRTException, match="NaN"):
            cim.run([b], 1000)
    with pytest.raises(HailoRTException, match="after its `with` block"):
        cim.run([b], 1000)
    vd.release()
    with pytest.raises(HailoRTException, match="after release"):
        vd.create_infer_model(hef_path)


def test_legacy_params_must_name_the_streams(hef_path):
    with VDevice() as vd:
        ng = vd.configure(HEF(hef_path))[0]
        with pytest.raises(HailoRTException, match="input vstream params"):
            InferVStreams(ng, {"x": {"format_type": FormatType.FLOAT32}}, OutputVStreamParams.make(ng))
        with InferVStreams(ng, InputVStreamParams.make(ng, format_type=FormatType.FLOAT32),
                           OutputVStreamParams.make(ng)) as pipe:
            ints = np.random.default_rng(0).integers(0, 2, (3, 28, 28, 1))
            np.testing.assert_array_equal(pipe.infer(ints)["net/fc3"],
                                          pipe.infer(ints.astype(np.float32))["net/fc3"])
            with pytest.raises(HailoRTException, match="not numeric"):
                pipe.infer(np.zeros((1, 28, 28, 1), bool))
