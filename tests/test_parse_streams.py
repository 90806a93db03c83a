"""`hailopipe parse-hef --parse-streams`: the `Stream infos:` block of `hailortcli parse-hef --parse-streams`.

Expected text derived from hailort's printing code (branch hailo8 = 4.x, master = 5.x, identical
there): Hef::Impl::get_description(stream_infos=true, ...) prints, under each "Network name:" line,
add_tabs(2) + "Stream infos:" and then per stream add_tabs(3) + "Input  " / "Output " + name + " " +
get_shape_str(hailo_stream_info_t): "<type>, <device order>(HxWxF)" of hw_shape, "(F)" for NC,
"(HxW)" for NHW, "(maximum frame size: N)" for HAILO NMS ON CHIP; before the VStream infos.  The
device order comes from HailoRTDefaults::get_device_format_order (compiler format 1 = NHCW), and
hw_shape is the padded shape unless HailoRT pads on the device (is_core_hw_padding_supported).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from hailopipe.formats import ehef, parse_hef
from hailopipe.formats.hef_schema import MESSAGES
from tests.test_cli import REAL_HEF, SCRIPT, needs_real_hef
from tests.test_device_check import hef_file


def parse_hef_cli(*args) -> str:
    p = subprocess.run([SCRIPT, "parse-hef", *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@needs_real_hef
def test_real_hef_stream_infos_as_hailortcli_4_prints_them():
    assert parse_hef_cli("--parse-streams", REAL_HEF) == (
        "Architecture HEF was compiled for: HAILO8\n"
        "Network group name: MNIST_CNN, Single Context\n"
        "    Network name: MNIST_CNN/MNIST_CNN\n"
        "        Stream infos:\n"
        "            Input  MNIST_CNN/input_layer1 UINT8, NHCW(32x32x1)\n"
        "            Output MNIST_CNN/maxpool3 UINT8, FCR(4x4x16)\n"
        "        VStream infos:\n"
        "            Input  MNIST_CNN/input_layer1 UINT8, NHWC(32x32x1)\n"
        "            Output MNIST_CNN/maxpool3 UINT8, FCR(4x4x16)\n")


@needs_real_hef
def test_real_hef_stream_infos_in_5x_text_and_json():
    text = parse_hef_cli("--parse-streams", "--hailort", "5", REAL_HEF)
    assert text.startswith("HEF Compatible for: HAILO8\nHEF Compiler Version: 3.27.0\n")
    assert "        Stream infos:\n            Input  MNIST_CNN/input_layer1 UINT8, NHCW(32x32x1)\n" in text
    assert " Stream infos:" not in parse_hef_cli(REAL_HEF)  # off by default, as in hailortcli
    streams = json.loads(parse_hef_cli("--json", REAL_HEF))["network_groups"][0]["streams"]
    assert [(s["name"], s["direction"], s["format_type"], s["order"], s["hw_shape"]) for s in streams] == [
        ("MNIST_CNN/input_layer1", "input", "UINT8", "NHCW", [32, 32, 1]),
        ("MNIST_CNN/maxpool3", "output", "UINT8", "FCR", [4, 4, 16])]


def test_emulated_streams_are_its_vstreams(tmp_path, fitted_qnet):
    path = tmp_path / "m.hef"
    path.write_bytes(ehef.compile_network(fitted_qnet, "hailo8l"))
    text = parse_hef_cli("--parse-streams", path)
    streams, vstreams = text.split("        Stream infos:\n")[1].split("        VStream infos:\n")
    assert streams == vstreams == ("            Input  net/input_layer1 UINT8, NHWC(28x28x1)\n"
                                   "            Output net/fc3 UINT8, NC(10)\n")


def _base(h, w, f, fmt, data_bytes=1, pad=(0, 0, 0), **extra):
    return MESSAGES["Base"](height=h, width=w, features=f, padded_height=h + pad[0], padded_width=w + pad[1],
                            padded_features=f + pad[2], format=fmt, data_bytes=data_bytes, **extra)


def _synthetic(hw_padding_in_dfc: bool) -> bytes:
    """Inputs that HailoRT pads on the device or not, a mux, an on-chip NMS and an NC output."""
    hef = MESSAGES["Hef"]()
    hef.header.hw_arch, hef.header.version = 1, 1  # HAILO8P; extensions are read (version > 0)
    if hw_padding_in_dfc:
        hef.optional_extensions.add(type_index=11, name="HW Padding")
    ng = hef.network_groups.add()
    ng.network_group_metadata.network_group_name = "net"
    ng.networks_names.append("net")
    ctx = ng.contexts.add()

    def edge(direction, name, base, kind="layer_info"):
        e = ctx.metadata.edge_layers.add(direction=direction)
        getattr(e, kind).name = name
        getattr(e, kind).edge_layer_base.MergeFrom(base)
        return e

    edge(0, "net/in_a", _base(10, 8, 3, 1, pad=(0, 0, 1), core_buffers_per_frame=10))  # NHCW, device may pad
    edge(0, "net/in_b", _base(10, 8, 3, 1, pad=(0, 0, 1), core_buffers_per_frame=5))   # one buffer != one row
    edge(0, "net/in_c", _base(10, 5, 3, 1, pad=(0, 0, 1), core_buffers_per_frame=10))  # 5x3 bytes: not 8-aligned
    mux = edge(1, "net/mux", _base(6, 4, 2, 0, pad=(0, 4, 0)), "layer_mux")
    for name in ("net/p1", "net/p2"):
        pred = mux.layer_mux.predecessors.add()
        pred.layer_info.name = name
        pred.layer_info.edge_layer_base.MergeFrom(_base(3, 4, 2, 0))
    nms = _base(0, 0, 0, 6, data_bytes=2)
    nms.additional_info.nms_info.MergeFrom(MESSAGES["NmsInfo"](number_of_classes=80, max_output_size=100,
                                                               bbox_size=10, input_division_factor=1))
    edge(1, "net/nms", nms)
    edge(1, "net/fc1", _base(1, 1, 10, 2, data_bytes=2, pad=(0, 0, 6)))
    return hef.SerializeToString()


@pytest.mark.parametrize("hw_padding_in_dfc, in_a", [(False, "10x8x3"), (True, "10x8x4")])
def test_hw_shapes_mux_nms_and_nc(tmp_path, hw_padding_in_dfc, in_a):
    info, _ = parse_hef.read(hef_file(tmp_path / "s.hef", _synthetic(hw_padding_in_dfc)))
    text = parse_hef.describe(info, streams=True)
    block = text.split("        Stream infos:\n")[1].split("        VStream infos:\n")[0]
    # NMS frame: classes * (u16 counter + bbox_size * max(burst 1, max boxes)) + bbox_size * burst
    assert block == (f"            Input  net/in_a UINT8, NHCW({in_a})\n"
                     "            Input  net/in_b UINT8, NHCW(10x8x4)\n"
                     "            Input  net/in_c UINT8, NHCW(10x5x4)\n"
                     "            Output net/mux UINT8, NHWC(6x8x2)\n"
                     f"            Output net/nms UINT16, HAILO NMS ON CHIP(maximum frame size: {80 * (2 + 10 * 100) + 10})\n"
                     "            Output net/fc1 UINT16, NC(16)\n")
