"""The HailoRT-shaped runtime API on a compiled file."""

import numpy as np
import pytest

from hailopipe import hef, quant
from hailopipe.engine import Engine
from hailopipe.runtime import (HEF, FormatOrder, FormatType, HailoRTException, InferModel, InferVStreams,
                               InputVStreamParams, OutputVStreamParams, VDevice)


@pytest.fixture
def hef_path(tmp_path, fitted_qnet):
    p = tmp_path / "m.hef"
    p.write_bytes(hef.compile_network(fitted_qnet, "hailo8l"))
    return p


def test_stream_infos_match_the_header(hef_path):
    h = HEF(str(hef_path))
    meta = hef.load(hef_path).meta
    (i,), (o,) = h.get_input_vstream_infos(), h.get_output_vstream_infos()
    assert i.name == meta["inputs"][0]["name"] and i.shape == (28, 28, 1)
    assert i.format.type == FormatType.UINT8 and i.format.order == FormatOrder.NHWC
    assert i.quant_info.qp_scale == meta["inputs"][0]["qp_scale"] and i.quant_info.qp_zp == 0
    assert o.shape == (10,) and o.format.order == FormatOrder.NC
    assert o.quant_info.qp_zp == meta["outputs"][0]["qp_zp"]
    assert h.get_network_group_names() == ["net"] and h.get_sorted_output_names() == [o.name]
    assert h.hw_arch == "hailo8l"


def test_hailort_flow_float_and_raw_agree(hef_path, val_images):
    x, y = val_images
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
            pixels = np.rint(x * 255).astype(np.uint8)
            out_u = pipe.infer(pixels)[out_name]
    assert out_f.dtype == np.float32 and out_u.dtype == np.uint8 and out_f.shape == (len(x), 10)
    q = h.get_output_vstream_infos()[0].quant_info
    np.testing.assert_array_equal(out_f, quant.dequantize(out_u, q.qp_scale, q.qp_zp))
    assert (out_f.argmax(1) == y).mean() > 0.75


def test_float_input_conversion_is_hailort_rounding(hef_path):
    m = InferModel(HEF(hef_path))
    x = np.array([0.0, 0.4 / 255, 1.6 / 255, 1.0, 7.0, -3.0], np.float32).reshape(1, 1, 6, 1)
    assert m.quantize_input(x).ravel().tolist() == [0, 0, 2, 255, 255, 0]


def test_raw_path_is_the_engine(hef_path, fitted_qnet):
    pixels = np.random.default_rng(2).integers(0, 256, (20, 28, 28, 1)).astype(np.uint8)
    got = InferModel(HEF(hef_path)).run_raw(pixels)
    want = quant.to_unsigned(Engine(fitted_qnet).run(quant.from_unsigned(pixels, 8)), 8)
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
