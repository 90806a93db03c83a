"""Accuracy of this project's int8 optimizer against TensorFlow Lite's full-integer post-training quantization.

    MNIST_NPZ=/work/shared/data/mnist.npz python bench/quant_vs_tflite.py \\
        [--hidden 64,32 256,128 1024,512] [--cnn 8,16,16 16,32,32] [--calib 64 256 2000] [--epochs N]
        [--cache DIR]

For each network, one Keras model is trained with `hailopipe.model.train` (params.yaml's `train`
settings, with the dense hidden sizes of --hidden, or `train.arch: cnn` with the conv filters of
--cnn, and the epochs overridden; cached in --cache as model.h5 + model.tflite, so a re-run does
not retrain).  For each calibration size N, both quantizers get the same trained model
and the same calibration images, the first N validation images (the pipeline's default selection):

  ours    the pipeline's own path on the emulator backend: parse the float .tflite -> optimize with
          params.yaml's `optimize` settings (at optimization levels 0, 1 and 2) -> compile -> run the
          compiled file through the runtime with float32 streams;
  TFLite  `tf.lite.TFLiteConverter.from_keras_model` with `representative_dataset` = those N images,
          `Optimize.DEFAULT`, `TFLITE_BUILTINS_INT8`, int8 input and output, run by LiteRT's
          `Interpreter` on int8 inputs quantized with the model's own input scale and zero point.

Printed: accuracy on all 10,000 validation images (what the evaluate stage reports) and on the
held-out ones, val[N:], which neither quantizer saw; then faithfulness to the float model, on the
held-out validation images plus the 60,000 training images (seven times the images, so differences
of a few predictions are less of a coin toss): how many predictions differ from the float model's,
and the logit SNR (dB, as `hailopipe.quantization.noise`).  Column `L<level>+a16` is ours with the output layer
at a16_w16 (Hailo's usual remedy; not int8, so not part of the comparison).  The last line checks
the default model (params.yaml's training and optimize settings): int8 accuracy >= float - 0.05 pp;
and, with --cnn, the CNN targets: float accuracy >= 99.0 %, compiled int8 within 0.1 pp of float,
and ours >= TFLite in every cell of the first accuracy table.
TensorFlow is imported here, never by the pipeline's optimize stage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hailopipe import backends, data, evaluate, model
from hailopipe.errors import setup_logging
from hailopipe.formats import tflite
from hailopipe.network import Pool
from hailopipe.quantization import noise
from stages import params
from stages.optimize import config
from stages.train import config as train_config

log = logging.getLogger("bench")
LEVELS = (0, 1, 2)


def name(cfg: model.TrainConfig) -> str:
    """784-256-128-10 for a dense network, cnn-8-16-16-10 for a CNN (its conv filters, head, output)."""
    if cfg.arch == "cnn":
        return "cnn-" + "-".join(map(str, (*cfg.conv, *cfg.head, 10)))
    return "784-" + "-".join(map(str, cfg.hidden)) + "-10"


def trained(cfg: model.TrainConfig, arrays, cache: Path) -> Path:
    """Directory with model.h5 and model.tflite of `cfg`, trained once and cached."""
    out = cache / f"{name(cfg)}_e{cfg.epochs}_s{cfg.seed}_d{cfg.dropout}_lr{cfg.learning_rate}_b{cfg.batch_size}"
    if not (out / "model.tflite").is_file():
        t = time.time()
        net, _ = model.train(cfg, data.to_float(arrays["x_train"]), arrays["y_train"],
                             data.to_float(arrays["x_val"]), arrays["y_val"])
        model.export(net, out)
        log.info("bench: trained %s in %.0f s", out.name, time.time() - t)
    return out


def tflite_int8_logits(h5: Path, calib: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Dequantized logits of TFLite's full-integer PTQ of the Keras model, calibrated on `calib`."""
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    conv = tf.lite.TFLiteConverter.from_keras_model(keras.models.load_model(h5, compile=False))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):
        flat = conv.convert()
    interp = Interpreter(model_content=flat, num_threads=os.cpu_count() or 1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zp = inp["quantization"]
    q = np.clip(np.rint(x / np.float32(scale)) + zp, -128, 127).astype(np.int8)
    interp.resize_tensor_input(inp["index"], list(q.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], q)
    interp.invoke()
    o_scale, o_zp = out["quantization"]
    return (interp.get_tensor(out["index"]).astype(np.float32) - o_zp) * np.float32(o_scale)


def ours_logits(tfl: Path, calib: np.ndarray, x, cfg, work: Path) -> np.ndarray:
    """Logits (float32 streams) of the compiled model the pipeline builds (emulator backend)."""
    har, qhar, hef = work / "m.har", work / "mq.har", work / "m.hef"
    backends.get("emulator", "parse").parse(tfl, har, "mnist", "hailo8")
    backends.get("emulator", "optimize").optimize(har, qhar, calib * np.float32(255), cfg, "hailo8")  # raw pixels
    backends.get("emulator", "compile").compile(qhar, hef, "hailo8")
    return backends.get("emulator", "evaluate").infer_compiled(hef, x * np.float32(255))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", nargs="*", default=["64,32", "256,128", "1024,512"], help="dense hidden sizes")
    ap.add_argument("--cnn", nargs="*", default=["8,16,16", "16,32,32"],
                    help="CNN conv filters (params.yaml's kernel and head)")
    ap.add_argument("--calib", nargs="+", type=int, default=[64, 256, 2000])
    ap.add_argument("--epochs", type=int, default=None, help="default: params.yaml train.epochs (per arch)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "hailopipe-bench-models"))
    args = ap.parse_args()
    setup_logging(logging.WARNING)
    log.setLevel(logging.INFO)
    model._quiet_tensorflow()
    p = params.load()
    base = train_config(p, "dense")  # params.yaml's training settings, checked as the stage checks them
    cnn_base = train_config(p, "cnn")
    default_level = p.int("optimize.optimization_level")
    arrays = data.load_split("data/mnist.npz") if Path("data/mnist.npz").is_file() else _official()
    x, y = data.to_float(arrays["x_val"]), arrays["y_val"]
    x_all = np.concatenate([x, data.to_float(arrays["x_train"])])  # fidelity is also measured on the training images
    cache = Path(args.cache)
    default_n = p.int("calibration.size")
    jobs = {replace(base, hidden=tuple(int(v) for v in h.split(",")), epochs=args.epochs or base.epochs):
            list(args.calib) for h in args.hidden}
    jobs.update({replace(cnn_base, conv=tuple(int(v) for v in c.split(",")), epochs=args.epochs or cnn_base.epochs):
                 list(args.calib) for c in args.cnn})
    if default_n not in jobs.setdefault(base, []):
        jobs[base].append(default_n)  # the default model at its own calibration size, for the check at the end
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for tc, sizes in jobs.items():
            d = trained(tc, arrays, cache)
            fl = evaluate.tflite_logits(d / "model.tflite", x_all)
            layers = [layer.name for layer in tflite.read(d / "model.tflite", "mnist").layers
                      if not isinstance(layer, Pool)]
            for n in sizes:
                cfg_n = config(p, n, layers, backends.get("emulator", "optimize").PRECISION_MODES)
                calib = x[:n]
                runs = {"TFLite": tflite_int8_logits(d / "model.h5", calib, x_all)}
                for lv in LEVELS:
                    cfg = replace(cfg_n, optimization_level=lv)
                    runs[f"ours L{lv}"] = ours_logits(d / "model.tflite", calib, x_all, cfg, Path(tmp))
                out16 = replace(cfg_n, precision={**cfg_n.precision, layers[-1]: "a16_w16"})
                runs[f"L{default_level}+a16"] = ours_logits(d / "model.tflite", calib, x_all, out16, Path(tmp))
                rows.append((tc, n, fl, runs))
                log.info("bench: %s N=%d done (%.0f s)", name(tc), n, time.time() - t0)
    print_tables(rows, y, default_level, base, default_n)


def _official():
    arrays = data.load_official()
    return {"x_train": arrays["x_train"], "y_train": arrays["y_train"], "x_val": arrays["x_test"], "y_val": arrays["y_test"]}


def print_tables(rows, y, default_level, base, default_n) -> None:
    ours = f"ours L{default_level}"

    def table(title, value, fmt, with_float=True):
        print(f"\n{title}")
        names = list(rows[0][3])
        print(f"{'network':>16} {'epochs':>6} {'N':>5} " + (f"{'float':>7} " if with_float else "")
              + " ".join(f"{k:>8}" for k in names) + f"  {ours} vs TFLite")
        for tc, n, fl, runs in rows:
            v = {k: value(logits, fl, n) for k, logits in runs.items()}
            first = f"{value(fl, fl, n):7.2f} " if with_float else ""
            print(f"{name(tc):>16} {tc.epochs:>6} {n:>5} {first}"
                  + " ".join(f"{v[k]:8{fmt}}" for k in names) + f"  {v[ours] - v['TFLite']:+{fmt}}")

    def acc(held):
        return lambda logits, fl, n: 100 * (logits[n if held else 0:len(y)].argmax(1) == y[n if held else 0:]).mean()

    table("Accuracy (%) on all 10000 validation images (ours = compiled model, other settings from params.yaml)",
          acc(False), ".2f")
    table("Accuracy (%) on the held-out validation images val[N:], which calibration did not see", acc(True), ".2f")
    table(f"Images whose prediction differs from the float model's, of the {len(rows[0][2]) - len(y)} training and the "
          "held-out validation images (fewer is more faithful)",
          lambda logits, fl, n: float((logits[n:].argmax(1) != fl[n:].argmax(1)).sum()), ".0f", with_float=False)
    table("Logit SNR (dB) against the float model, on the same images (higher is more faithful)",
          lambda logits, fl, n: noise.snr_db(fl[n:], logits[n:]), ".2f", with_float=False)
    for tc, n, fl, runs in rows:
        if tc == base and n == default_n:
            f_acc, q_acc = (100 * (a[:len(y)].argmax(1) == y).mean() for a in (fl, runs[ours]))
            print(f"\nDefault model (params.yaml: {name(tc)}, {tc.epochs} epochs, N={n}, "
                  f"level {default_level}): float {f_acc:.2f} %, int8 compiled {q_acc:.2f} %, drop "
                  f"{f_acc - q_acc:+.2f} pp (target <= 0.05 pp): {'met' if f_acc - q_acc <= 0.05 + 1e-9 else 'NOT met'}")
    cnn = [(tc, n, fl, runs) for tc, n, fl, runs in rows if tc.arch == "cnn"]
    for tc in dict.fromkeys(tc for tc, *_ in cnn):
        cells = [(n, *(100 * (a[:len(y)].argmax(1) == y).mean() for a in (fl, runs[ours], runs["TFLite"])))
                 for t, n, fl, runs in cnn if t == tc]
        f_acc = cells[0][1]
        worst = max(f - o for _, f, o, _ in cells)
        beats = all(o >= t for _, _, o, t in cells)
        print(f"CNN {name(tc)} ({tc.epochs} epochs, level {default_level}): float {f_acc:.2f} % (target >= 99.00: "
              f"{'met' if f_acc >= 99.0 else 'NOT met'}); largest drop of the compiled int8 {worst:+.2f} pp over N = "
              f"{', '.join(str(c[0]) for c in cells)} (target <= 0.10: {'met' if worst <= 0.1 + 1e-9 else 'NOT met'}); "
              f"ours >= TFLite in every cell: {'met' if beats else 'NOT met'}")


if __name__ == "__main__":
    main()
