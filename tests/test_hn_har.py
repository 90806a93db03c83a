"""HN conversion and the HAR archive: round trips, byte stability, and refusal of broken archives."""

import copy
import io
import json
import tarfile

import numpy as np
import pytest

from hailopipe.errors import PipelineError
from hailopipe.formats import har, hn
from hailopipe.quantization import optimizer
from hailopipe.quantization.config import OptimizeConfig


def normalized(net):
    return optimizer.with_normalization(net, OptimizeConfig())


@pytest.mark.parametrize("with_norm", [False, True])
def test_hn_layout(small_net, with_norm):
    """The SDK's names and wiring: fc<N>, output_layers_order naming the layer that feeds the output,
    and after the model script a normalization1 layer between the input and fc1."""
    graph = hn.to_hn(normalized(small_net) if with_norm else small_net)
    assert graph["net_params"]["output_layers_order"] == ["net/fc3"]
    layers = graph["layers"]
    first = "net/normalization1" if with_norm else "net/fc1"
    assert list(layers) == ["net/input_layer1"] + (["net/normalization1"] if with_norm else []) + [
        "net/fc1", "net/fc2", "net/fc3", "net/output_layer1"]
    assert layers["net/input_layer1"]["type"] == "input_layer" and layers["net/input_layer1"]["output"] == [first]
    assert layers["net/input_layer1"]["output_shapes"] == [[-1, 28, 28, 1]]
    assert layers["net/fc1"]["input"] == ["net/normalization1" if with_norm else "net/input_layer1"]
    assert layers["net/fc1"]["params"]["kernel_shape"] == [784, 32]
    assert layers["net/fc1"]["params"]["activation"] == "relu"
    assert layers["net/fc3"]["output_shapes"] == [[-1, 1, 1, 10]]
    assert layers["net/output_layer1"]["input"] == ["net/fc3"]
    assert layers["net/output_layer1"]["original_names"] == ["out"]
    if with_norm:
        norm = layers["net/normalization1"]
        assert norm["type"] == "normalization" and norm["output_shapes"] == [[-1, 28, 28, 1]]
        assert norm["params"] == {"activation": "linear", "elementwise_add": False}
        w = hn.weights(normalized(small_net))
        assert w["net/normalization1/kernel:0"].tolist() == [np.float32(1 / 255)]
        assert w["net/normalization1/bias:0"].tolist() == [0.0]


@pytest.mark.parametrize("with_norm", [False, True])
def test_hn_round_trip(small_net, with_norm):
    net = normalized(small_net) if with_norm else small_net
    back = hn.from_hn(hn.to_hn(net), hn.weights(net))
    assert [layer.name for layer in back.layers] == [layer.name for layer in small_net.layers]
    for a, b in zip(back.layers, small_net.layers):
        assert (a.kernel == b.kernel).all() and (a.bias == b.bias).all() and a.activation == b.activation
    assert (back.normalization is None) == (not with_norm)
    if with_norm:
        assert back.normalization.kernel.tolist() == net.normalization.kernel.tolist()
        assert hn.to_hn(back) == hn.to_hn(net)


@pytest.mark.parametrize("edit,words", [
    (lambda graph, p: p.update({"net/normalization1/kernel:0": np.zeros(1, np.float32)}), "positive"),
    (lambda graph, p: p.update({"net/normalization1/kernel:0": np.ones(3, np.float32)}), "shape [1]"),
    (lambda graph, p: p.pop("net/normalization1/bias:0"), "missing"),
    (lambda graph, p: graph["layers"]["net/normalization1"].update(output_shapes=[[-1, 28, 28, 2]]), "shape"),
    (lambda graph, p: graph["net_params"].update(output_layers_order=["net/output_layer1"]), "output_layers_order"),
])
def test_hn_refuses_a_broken_normalization_or_output_order(small_net, edit, words):
    net = normalized(small_net)
    graph, params = copy.deepcopy(hn.to_hn(net)), dict(hn.weights(net))
    edit(graph, params)
    with pytest.raises(PipelineError, match=r"^x\.hn") as err:
        hn.from_hn(graph, params, "x.hn")
    assert words in str(err.value)


def _broken(small_net, edit):
    graph = copy.deepcopy(hn.to_hn(small_net))
    params = dict(hn.weights(small_net))
    edit(graph, params)
    with pytest.raises(PipelineError) as err:
        hn.from_hn(graph, params, "x.hn")
    return str(err.value)


def test_hn_refuses_cycles(small_net):
    def edit(graph, p):
        graph["layers"]["net/fc2"]["output"] = ["net/fc1"]
        graph["layers"]["net/fc1"]["input"] = ["net/fc2"]
    assert "x.hn" in _broken(small_net, edit)


@pytest.mark.parametrize("edit,words", [
    (lambda graph, p: graph["layers"]["net/fc2"].update(type="deconv"), "unsupported type"),
    (lambda graph, p: graph["layers"]["net/fc2"].update(type="conv"), "kernel_shape must be [kh, kw, cin, cout]"),
    (lambda graph, p: graph["layers"]["net/fc2"]["params"].update(activation="swish"), "activation"),
    (lambda graph, p: p.update({"net/fc2/kernel:0": np.zeros((31, 16), np.float32)}), "kernel shape"),
    (lambda graph, p: p.__setitem__("net/fc1/bias:0", np.full(32, np.nan, np.float32)), "NaN"),
    (lambda graph, p: p.pop("net/fc3/bias:0"), "missing"),
    (lambda graph, p: graph["layers"].pop("net/output_layer1"), "unknown layer"),
    (lambda graph, p: graph["layers"]["net/input_layer1"].update(output_shapes=[[1, 28, 28]]), "shape"),
])
def test_hn_refuses_broken_graphs(small_net, edit, words):
    assert words in _broken(small_net, edit)


def test_har_round_trip_and_bytes_are_stable(tmp_path, small_net, fitted_net, fitted_qnet):
    a, b = tmp_path / "a.har", tmp_path / "b.har"
    with pytest.raises(ValueError, match="normalization"):  # the HN must have the layer the q.npz has
        har.save(har.Har("quantized_model", fitted_net, fitted_qnet, {"hw_arch": "hailo8"}), a)
    h = har.Har("quantized_model", normalized(fitted_net), fitted_qnet, {"hw_arch": "hailo8"})
    har.save(h, a)
    har.save(h, b)
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["net.metadata.json", "net.hn", "net.npz", "net.q.npz"]
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
    back = har.load(a, expect_state="quantized_model")
    assert back.metadata["state"] == "quantized_model" and back.metadata["emulated"] is True
    for x, y in zip([back.qnet.normalization, *back.qnet.layers], [fitted_qnet.normalization, *fitted_qnet.layers]):
        assert (x.kernel == y.kernel).all() and (x.m0 == y.m0).all() and x.out_zp == y.out_zp


def test_har_wrong_state(tmp_path, small_net):
    p = tmp_path / "m.har"
    har.save(har.Har("hailo_model", small_net), p)
    with pytest.raises(PipelineError, match="state 'hailo_model', expected 'quantized_model'"):
        har.load(p, expect_state="quantized_model")


def _tar_with(path, entries):
    with tarfile.open(path, "w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("kind", ["symlink", "dotdot", "absolute", "duplicate", "hugesize"])
def test_har_refuses_unsafe_members(tmp_path, kind):
    p = tmp_path / "evil.har"
    info = tarfile.TarInfo("net.metadata.json")
    data = json.dumps({"state": "hailo_model"}).encode()
    info.size = len(data)
    entries = [(info, data)]
    if kind == "symlink":
        link = tarfile.TarInfo("net.hn")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        entries.append((link, None))
    elif kind in ("dotdot", "absolute"):
        bad = tarfile.TarInfo("../x.hn" if kind == "dotdot" else "/tmp/x.hn")
        bad.size = 2
        entries.append((bad, b"{}"))
    elif kind == "duplicate":
        entries.append((info, data))
    _tar_with(p, entries)
    if kind == "hugesize":
        raw = bytearray(p.read_bytes())
        raw[124:136] = b"77777777777\0"  # declared size 8 GiB
        raw[148:156] = b"        "
        raw[148:154] = f"{sum(raw[:512]):06o}".encode()
        p.write_bytes(bytes(raw))
    with pytest.raises(PipelineError) as err:
        har.read_members(p)
    assert str(p) in str(err.value)
    assert not (tmp_path.parent / "x.hn").exists()


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.5, 0.9])
def test_har_truncated(tmp_path, small_net, fraction):
    p = tmp_path / "m.har"
    har.save(har.Har("hailo_model", small_net), p)
    raw = p.read_bytes()
    p.write_bytes(raw[:int(len(raw) * fraction)])
    with pytest.raises(PipelineError, match=str(p)):
        har.load(p)


def test_har_npz_with_pickled_object_is_refused(tmp_path, small_net):
    p = tmp_path / "m.har"
    har.save(har.Har("hailo_model", small_net), p)
    members = har.read_members(p)
    buf = io.BytesIO()
    np.savez(buf, **{"net/fc1/kernel:0": np.array([object()], dtype=object)})
    members["net.npz"] = buf.getvalue()
    with tarfile.open(p, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(PipelineError, match="net.npz"):
        har.load(p)
