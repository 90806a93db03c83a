"""End-to-end check of the hailo backend on the real SDK: parse, optimize, compile, evaluate.

Run it with the Python that has Hailo's Dataflow Compiler (and HailoRT plus a device for the last
step), from the repo root, once the emulator pipeline has made its inputs (`dvc repro train`):

    python bench/hailo_e2e.py [--hw-arch hailo8] [--calibration-size N] [--images N] [--keep DIR]

It runs the hailo backend's functions, and the emulator's for comparison, on
models/float/model.tflite and data/mnist.npz with the params.yaml optimize settings, into a
temporary directory, and prints side by side: accuracies (TFLite float, SDK_NATIVE,
SDK_QUANTIZED, the HEF on the device, the emulator), how the parse went (node names, retries),
what the DFC applied (level, bias correction, finetune, GPU), the SDK's warnings, both compile
reports, the HEF header and frames per second.  It exits 1 with one `error:` line if a step fails
or a check fails:

- SDK_NATIVE logits within 1e-3 of the TFLite model's (the parser kept the network);
- SDK_QUANTIZED accuracy at most 1 percentage point below float;
- with a device, the HEF agrees with SDK_QUANTIZED on at least 99.5% of the images.

With the test stand-in instead of the SDK (PYTHONPATH=tests/fake_hailo) it runs the same way, and
also with FAKE_HAILO_DEVICES=0 for the device step: that is how it was checked without the SDK.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for stages.optimize.config (the stage's params -> OptimizeConfig)

from hailopipe import backends, data, evaluate
from hailopipe.errors import PipelineError, run_main
from stages import params
from stages.optimize import config


def timed(label: str, times: dict, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    times[label] = time.perf_counter() - start
    return out


def steps(name: str) -> SimpleNamespace:
    """The functions of backend `name` this script runs, from the module of each step."""
    get = {step: backends.get(name, step) for step in ("parse", "optimize", "compile", "evaluate")}
    return SimpleNamespace(parse=get["parse"].parse, optimize=get["optimize"].optimize, compile=get["compile"].compile,
                           infer_native=get["evaluate"].infer_native, infer_quantized=get["evaluate"].infer_quantized,
                           infer_compiled=get["evaluate"].infer_compiled)


def run_backend(backend, out: Path, tflite, calib, cfg, hw_arch: str, x, raw, times: dict) -> dict:
    """Every step of `backend`; `x` the images in the model's domain (pixels / 255), `raw` the same
    as raw pixels 0-255 (what the quantized and compiled models take), `calib` raw pixels too."""
    out.mkdir(parents=True, exist_ok=True)
    har, qhar, hef = out / "mnist.har", out / "mnist_quantized.har", out / "mnist.hef"
    parsed = timed("parse", times, backend.parse, tflite, har, "mnist", hw_arch)
    summary = timed("optimize", times, backend.optimize, har, qhar, calib, cfg, hw_arch)
    report = timed("compile", times, backend.compile, qhar, hef, hw_arch)
    result = {"parse": parsed, "summary": summary, "report": report,
              "quantized": timed("quantized", times, backend.infer_quantized, qhar, raw),
              "native": backend.infer_native(har, x)}
    try:
        result["compiled"] = timed("compiled", times, backend.infer_compiled, hef, raw)
    except PipelineError as exc:
        if "no Hailo device" not in str(exc):
            raise
        result["compiled"], result["no_device"] = None, str(exc)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hw-arch", help="default: params.yaml hw_arch")
    ap.add_argument("--calibration-size", type=int, help="default: params.yaml calibration.size (first N)")
    ap.add_argument("--images", type=int, help="validation images to evaluate (default: all)")
    ap.add_argument("--keep", type=Path, help="write the artefacts here instead of a temporary directory")
    args = ap.parse_args()
    p = params.load(str(ROOT / "params.yaml"))
    hw_arch = args.hw_arch or p.hw_arch()
    tflite = ROOT / "models" / "float" / "model.tflite"
    arrays = data.load_split(ROOT / "data" / "mnist.npz")
    pixels, y_all = arrays["x_val"], arrays["y_val"]
    raw_all = pixels.astype(np.float32)[..., None]  # raw pixels 0-255, NHWC
    x, raw, y = data.to_float(pixels[:args.images]), raw_all[:args.images], y_all[:args.images]
    size = args.calibration_size or p.int("calibration.size", 1, len(raw_all))
    cfg = config(p, size, None, None)
    hailo = steps("hailo")
    out = args.keep or Path(tempfile.mkdtemp(prefix="hailo_e2e."))
    times_h, times_e = {}, {}
    h = run_backend(hailo, out / "hailo", tflite, raw_all[:size], cfg, hw_arch, x, raw, times_h)
    e = run_backend(steps("emulator"), out / "emulator", tflite, raw_all[:size], cfg, hw_arch, x, raw, times_e)
    fl = evaluate.tflite_logits(tflite, x)

    def acc(logits):
        return "-" if logits is None else f"{evaluate.accuracy(logits, y):.4f}"

    print(f"hailo backend end to end: hw_arch {hw_arch}, DFC {h['parse']['sdk_version']}, {len(y)} images, "
          f"calibration {size}, artefacts in {out}")
    print("parse:", f"end_node_names {h['parse']['end_node_names']}, {len(h['parse']['attempts'])} attempt(s)",
          *[f"{a['end_node_names']}: {a['error']}" for a in h["parse"]["attempts"] if a["error"]], sep="\n  ")
    print("applied by the DFC:", json.dumps(h["summary"].get("applied")))
    print("applied by the emulator:", json.dumps(e["summary"].get("applied")))
    print(f"{'':28}{'hailo SDK':>12}{'emulator':>12}")
    print(f"{'accuracy float (TFLite)':28}{acc(fl):>12}{acc(fl):>12}")
    print(f"{'accuracy SDK_NATIVE':28}{acc(h['native']):>12}{'-':>12}")
    print(f"{'accuracy quantized':28}{acc(h['quantized']):>12}{acc(e['quantized']):>12}")
    print(f"{'accuracy compiled (device)':28}{acc(h['compiled']):>12}{acc(e['compiled']):>12}")
    for step in ("parse", "optimize", "compile", "quantized", "compiled"):
        th, te = times_h.get(step), times_e.get(step)
        print(f"{'seconds ' + step:28}{'-' if th is None else f'{th:.2f}':>12}{'-' if te is None else f'{te:.2f}':>12}")
    if h["compiled"] is not None:
        print(f"{'frames/s on the device':28}{len(y) / times_h['compiled']:>12.0f}{'-':>12}")
    for key in ("macs", "weight_bytes", "layers"):
        print(f"{'compile ' + key:28}{h['report']['total'][key]:>12}{e['report']['total'][key]:>12}")
    print("HEF:", json.dumps(h["report"].get("hef")))
    print("SDK warnings:", *(h["summary"]["warnings"] or ["none"]), sep="\n  ")
    if h.get("no_device"):
        print("device step skipped:", h["no_device"])
    failures = []
    diff = float(abs(h["native"] - fl).max())
    if diff > 1e-3:
        failures.append(f"SDK_NATIVE logits differ from TFLite by {diff:.3g} (> 1e-3)")
    drop = 100 * (evaluate.accuracy(fl, y) - evaluate.accuracy(h["quantized"], y))
    if drop > 1.0:
        failures.append(f"SDK_QUANTIZED accuracy is {drop:.2f} pp below float (> 1 pp)")
    if h["compiled"] is not None:
        agree = float((h["compiled"].argmax(1) == h["quantized"].argmax(1)).mean())
        if agree < 0.995:
            failures.append(f"the HEF agrees with SDK_QUANTIZED on {agree:.2%} of images (< 99.5%)")
    print(f"SDK_NATIVE vs TFLite max |logit diff| {diff:.3g}; quantized drop {drop:.2f} pp")
    if failures:
        raise PipelineError("; ".join(failures))
    print("ok")


if __name__ == "__main__":
    run_main(main)
