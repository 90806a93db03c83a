"""Every HAR this project writes (parsed, quantized, compiled) opens in Netron, through Netron's own
Hailo reader (the JavaScript of the pinned `netron` package, run under Node by tests/netron_open.mjs),
and the graph it builds is the network: its layers with their types, the input and output, and the
weight tensors with their shapes and dtypes (float for the parsed HAR, the quantized params for the
others, under the names Netron reads from a .q.npz).  Before the metadata named the HN and carried a
numeric sdk_version, Netron refused all three ("Archive does not contain '.nn' configuration")."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hailopipe.formats import ehef, har
from tests.conftest import ROOT

NODE = shutil.which("node")
SPEC = importlib.util.find_spec("netron")


@pytest.fixture(scope="module")
def netron_dir():
    if NODE is None or SPEC is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Node.js and the netron package (requirements.txt) for this test")
        pytest.skip("Node.js or the netron package is missing")
    return Path(SPEC.origin).parent


def open_in_netron(netron_dir: Path, path: Path) -> dict:
    p = subprocess.run([NODE, str(ROOT / "tests" / "netron_open.mjs"), str(netron_dir), str(path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def archives(tmp_path_factory, fitted_net, fitted_norm_net, fitted_qnet):
    d = tmp_path_factory.mktemp("hars")
    har.save(har.Har("hailo_model", fitted_net), d / "p.har")
    har.save(har.Har("quantized_model", fitted_norm_net, fitted_qnet), d / "q.har")
    har.save(har.Har("compiled_model", fitted_norm_net, fitted_qnet, {}, ehef.compile_network(fitted_qnet, "hailo8")),
             d / "c.har")
    return d


@pytest.mark.parametrize("name,quantized", [("p.har", False), ("q.har", True), ("c.har", True)])
def test_netron_opens_every_har(netron_dir, archives, fitted_net, name, quantized):
    model = open_in_netron(netron_dir, archives / name)
    assert model["format"] == f"Hailo Archive v{har.SDK_VERSION}"
    (graph,) = model["graphs"]
    first = "net/normalization1" if quantized else "net/fc1"  # the model script's layer, after optimize
    assert [v for a in graph["inputs"] for v in a["values"]] == [f"net/input_layer1\n{first}"]
    assert [v for a in graph["outputs"] for v in a["values"]] == ["net/fc3\nnet/output_layer1"]
    nodes = [n for n in graph["nodes"] if n["type"] != "normalization"]  # in the HN's (sorted) key order
    if quantized:
        (norm,) = [n for n in graph["nodes"] if n["type"] == "normalization"]
        assert norm["name"] == "net/normalization1"
        weights = {a["name"]: a["values"][0]["initializer"] for a in norm["inputs"] if a["values"][0]["initializer"]}
        assert weights["kernel"] == {"dataType": "int8", "shape": [1]}
    assert [(n["name"], n["type"]) for n in nodes] == [(f"net/{d.name}", "dense") for d in fitted_net.layers]
    for node, d in zip(nodes, fitted_net.layers):
        weights = {a["name"]: a["values"][0]["initializer"] for a in node["inputs"] if a["values"][0]["initializer"]}
        k, c = d.kernel.shape
        if quantized:
            assert weights["kernel"] == {"dataType": "int8", "shape": [k, c]}
            assert weights["bias"] == {"dataType": "int64", "shape": [c]}
            assert {weights[b]["dataType"] for b in ("input_activation_bits", "weight_bits",
                                                      "output_activation_bits")} == {"uint8"}
        else:
            assert weights == {"kernel": {"dataType": "float32", "shape": [k, c]},
                               "bias": {"dataType": "float32", "shape": [c]}}


@pytest.mark.parametrize("quantized", [False, True])
def test_netron_opens_a_cnns_har(netron_dir, tmp_path, val_raw, quantized):
    """The convolutional layers' HN (conv, maxpool, avgpool) and weights as Netron's reader builds them."""
    from hailopipe.quantization import optimizer
    from hailopipe.quantization.config import OptimizeConfig
    from tests.test_cnn_flow import cnn

    net = cnn()
    if quantized:
        q = optimizer.quantize_network(net, val_raw[:64], OptimizeConfig(calib_size=64))
        har.save(har.Har("quantized_model", optimizer.with_normalization(net, OptimizeConfig()), q), tmp_path / "m.har")
    else:
        har.save(har.Har("hailo_model", net), tmp_path / "m.har")
    (graph,) = open_in_netron(netron_dir, tmp_path / "m.har")["graphs"]
    nodes = {n["name"]: n for n in graph["nodes"]}
    types = {name.split("/")[1]: n["type"] for name, n in nodes.items()}
    assert types == {"conv1": "conv", "maxpool1": "maxpool", "conv2": "conv", "avgpool1": "avgpool", "fc1": "dense",
                     **({"normalization1": "normalization"} if quantized else {})}
    weights = {a["name"]: a["values"][0]["initializer"] for a in nodes["net/conv1"]["inputs"]
               if a["values"][0]["initializer"]}
    assert weights["kernel"] == {"dataType": "int8" if quantized else "float32", "shape": [3, 3, 1, 8]}
    assert [v for a in graph["outputs"] for v in a["values"]] == ["net/fc1\nnet/output_layer1"]
