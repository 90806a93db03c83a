"""Write tests/data/mnist_128x64.hef: a small compiled model, trained on all of MNIST, that the CLI
tests run `hailopipe infer` with on the digit images of tests/data/digits, so that a clean checkout
(CI) checks real classification without running the DVC pipeline first.

Run from the repository root:  MNIST_NPZ=../shared/data/mnist.npz python tests/data/make_model.py

784-128-64-10 (dropout 0.2), 10 epochs with the project's own trainer (`model.train`, seeded),
read back from its float TFLite file, quantized by `optimizer.quantize_network` with the pipeline's defaults
(optimization level 2, 2000 calibration images) and compiled by the emulator (`ehef.compile_network`
for hailo8).  It doubles as a format check: a compiled file written by an earlier version of the
code must still load.  Prints the model's validation accuracy (float and compiled).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))


from hailopipe import data, model
from hailopipe.engine import Engine
from hailopipe.formats import (
    ehef,
    tflite,
)
from hailopipe.quantization import optimizer
from hailopipe.quantization.config import OptimizeConfig

OUT = HERE / "mnist_128x64.hef"
CALIB = 2000


def main() -> None:
    arrays = data.load_official()
    x_train, y_train = data.to_float(arrays["x_train"]), arrays["y_train"]
    x_val, y_val = data.to_float(arrays["x_test"]), arrays["y_test"]
    cfg = model.TrainConfig(hidden=(128, 64), dropout=0.2, epochs=10)
    keras_model, _ = model.train(cfg, x_train, y_train, x_val, y_val)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model.tflite_bytes(keras_model))
        net = tflite.read(path, "mnist")
    qnet = optimizer.quantize_network(net, x_val[:CALIB], OptimizeConfig(calib_size=CALIB))
    OUT.write_bytes(ehef.compile_network(qnet, "hailo8"))
    compiled = ehef.load(OUT).qnet
    q_out = Engine(compiled).run_stream(arrays["x_test"][..., None])
    float_acc = float((keras_model.predict(x_val, verbose=0).argmax(1) == y_val).mean())
    print(f"{OUT.name}: {OUT.stat().st_size} bytes; validation accuracy float {float_acc:.4f}, "
          f"compiled {float((q_out.argmax(1) == y_val).mean()):.4f}")


if __name__ == "__main__":
    main()
