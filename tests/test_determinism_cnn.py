"""The CNN (`train.arch: cnn`) trains to the same bytes on any x86-64 CPU, as the dense model does
(tests/test_determinism.py): a reduced CNN (conv, BatchNorm, max pool, a hidden Dense head) trained
in a fresh process under each oneDNN instruction-set level this CPU has, on one core and on two, and
as the stage pins it; model.h5 and model.tflite are the same bytes in every one.  The parse of that
TFLite file, and the numpy forward pass of the parsed network, are also the same bits under every
OpenBLAS core type this CPU can run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SUBSET
from tests.test_determinism import FLAGS, OPENBLAS_CORES, train_variants

pytestmark = pytest.mark.skipif("avx2" not in FLAGS, reason="x86-64 with AVX2 (TensorFlow's wheels need AVX)")

TRAIN = """
import hashlib, os, sys
import numpy as np
sys.path.insert(0, {root!r})
from hailopipe import data, model
if os.environ.get("PIN") == "1":
    model.pin_cpu()
if os.environ.get("CORES"):
    os.sched_setaffinity(0, {{int(c) for c in os.environ["CORES"].split(",")}})
with np.load({subset!r}) as s:
    x, y, xv, yv = (data.to_float(s["x_train"]), s["y_train"], data.to_float(s["x_val"]), s["y_val"])
cfg = model.TrainConfig(arch="cnn", conv=(4, 8), head=(16,), epochs=2, batch_size=64, dropout=0.1)
net, _ = model.train(cfg, x, y, xv, yv)
paths = model.export(net, sys.argv[1])
print(" ".join(hashlib.md5(open(paths[k], "rb").read()).hexdigest() for k in ("h5", "tflite")))
"""

FORWARD = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {root!r})
from hailopipe import data, network
from hailopipe.formats import hn, tflite
with np.load({subset!r}) as s:
    x = data.to_float(s["x_val"])
net = tflite.read(sys.argv[1], "mnist")
out, outs = network.forward(net, x, collect=True)
h = hashlib.md5(repr(hn.to_hn(net)).encode())
for a in [*hn.weights(net).values(), *outs]:
    h.update(a.tobytes())
print(h.hexdigest())
"""


def _run(code: str, arg: str, **env) -> str:
    p = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT), subset=str(SUBSET)), arg],
                       capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.split("\n")[-2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cnn")
    hashes = {name: _run(TRAIN, str(root / str(i)), **env) for i, (name, env) in enumerate(train_variants().items())}
    return hashes, root / "0"


def test_the_cnn_trains_to_the_same_bytes_under_every_variant(trained):
    hashes, _ = trained
    assert len(hashes) >= 4 and len(set(hashes.values())) == 1, hashes


def test_the_parsed_cnn_runs_to_the_same_bits_under_every_blas(trained):
    _, model_dir = trained
    tfl = str(Path(model_dir) / "model.tflite")
    variants = {"default": {}, "one BLAS thread": {"OPENBLAS_NUM_THREADS": "1"}}
    variants.update({f"OPENBLAS_CORETYPE={core}": {"OPENBLAS_CORETYPE": core}
                     for core, needs in OPENBLAS_CORES if needs <= FLAGS})
    results = {name: _run(FORWARD, tfl, **env) for name, env in variants.items()}
    assert len(set(results.values())) == 1, results
