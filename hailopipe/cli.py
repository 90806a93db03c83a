"""The `hailopipe` command: hailortcli-style tools for compiled models, plus parse-har and infer.

    hailopipe parse-hef FILE [--hailort 4|5] [--parse-streams] [--verbose | --json]
                                                describe a compiled file as hailortcli does (emulated or real)
    hailopipe check FILE --device ARCH [--hailort X.Y[.Z]] [--json]
                                                can this device run it, with which HailoRT (exit 0 yes, 1 no)
    hailopipe parse-har FILE [--json]           state, layers, parameters, quantization of a HAR
    hailopipe infer FILE IMAGE... [--invert auto|yes|no] [--json]
                                                classify PNG/JPEG/NPY digit images (see hailopipe.images)
    hailopipe run FILE [--frames N | --time S] [--batch-size B] [--format-type ...] [--json | --csv]
    hailopipe benchmark FILE [--frames N | --time S] [--batch-size B] [--json | --csv]

Installed by `pip install -e .` (entry point `hailopipe = hailopipe.cli:main`); also
`python -m hailopipe.cli`.  Every subcommand has --help.  Results go to stdout, progress bars and
errors to stderr; bad input (missing or wrong-kind file, unreadable image, bad option) ends with
one `error: ...` line and exit status 1 (2 for `check`, whose 1 means "not compatible"), never a
traceback.

run / benchmark time the legacy vstreams flow (InferVStreams.infer on batches) on frames of the
input stream's shape: random (fixed seed) or zeros, one pool reused as hailortcli does.  FPS =
frames / wall time of the loop; latency = the time of one infer call, i.e. of one batch, which is
what each of its frames waits; one untimed batch warms up first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from tqdm import tqdm

from hailopipe import __version__, images, network
from hailopipe.errors import PipelineError, run_main
from hailopipe.quantization import arithmetic


class _Parser(argparse.ArgumentParser):
    """Usage errors as one `error:` line and exit status 1 (`usage_status`), like every other bad input."""

    usage_status = 1

    def error(self, message):
        err = PipelineError(f"{self.prog}: {message} (see --help)")
        err.exit_status = self.usage_status
        raise err


def _emit_json(obj) -> None:
    print(json.dumps(obj, indent=2))


# --- parse-hef / parse-har -------------------------------------------------------------------

def describe_hef(args) -> None:
    from hailopipe.formats import parse_hef

    info, compiled = parse_hef.read(args.file)
    if args.json:
        _emit_json({**parse_hef.to_json(info), "compile_report": compiled.report if compiled else None})
        return
    style = {None: None, "4": "hailort4", "5": "hailort5"}[args.hailort]
    text = parse_hef.describe(info, style=style, streams=args.parse_streams, quantization=args.verbose)
    if compiled:  # stdout stays hailortcli's text; what the file is goes to stderr (and --verbose)
        print(f"note: {args.file} is hailopipe's emulated compiled file ({info.sdk_version}): it runs on the "
              "hailopipe emulator only, a Hailo device cannot load it", file=sys.stderr)
    if not args.verbose:
        print(text, end="")
        return
    if compiled:
        print(f"Emulated HEF: {args.file} (hailopipe compiled file v{info.header_version}, {info.checksum}); "
              "runs on the hailopipe emulator only, a Hailo device cannot load it")
        print(text, end="")
        report = compiled.report
        print("Layers:")
        q = compiled.qnet
        for name in ([q.normalization.name] if q.normalization else []) + [layer.name for layer in q.layers]:
            layer = report["layers"][name]  # in network order (the file's JSON keeps its keys sorted)
            shape_in, shape_out = ("x".join(map(str, layer[k])) for k in ("input_shape", "output_shape"))
            print(f"    {name}: {shape_in} -> {shape_out}, {layer['activation']}, {layer['precision_mode']}, "
                  f"{layer['macs']:,} MACs")
        t = report["total"]
        print(f"Total: {t['layers']} layers, {t['macs']:,} MACs, {t['weight_bytes']:,} bytes of weights and biases")
    else:
        print(f"Hailo HEF: {args.file} (header v{info.header_version}, {info.checksum})")
        print(text, end="")


def _quantization(layer) -> dict:
    if not hasattr(layer, "w_scale"):  # pooling: no weights, its input's bits
        return {"precision_mode": f"a{layer.bits}", "output_scale": layer.out_scale,
                "output_zero_point": layer.out_zp, "calibrated_range": list(arithmetic.real_range(
                    layer.out_scale, layer.out_zp, layer.bits))}
    return {"precision_mode": f"a{layer.out_bits}_w{layer.w_bits}",
            "weight_scale": [float(layer.w_scale.min()), float(layer.w_scale.max())],
            "per_channel": bool(np.unique(layer.w_scale).size > 1), "output_scale": layer.out_scale,
            "output_zero_point": layer.out_zp, "calibrated_range": list(layer.limvals)}


def check(args) -> None:
    """The compatibility verdict; exit 0 if the device runs the file, 1 if not, 2 for bad input."""
    from hailopipe.formats import compatibility

    try:
        verdict = compatibility.check(args.file, args.device, args.hailort)
    except PipelineError as exc:
        exc.exit_status = 2
        raise
    if args.json:
        _emit_json(verdict.to_json())
    else:
        print(verdict.text(), end="")
    sys.exit(0 if verdict.compatible else 1)


def _har_summary(h) -> dict:
    net, q = h.net, h.qnet
    layers = [{"name": "input_layer1", "type": "input", "output_shape": list(net.input_shape), "params": 0}]
    if net.normalization is not None:
        n = net.normalization
        entry = {"name": n.name, "type": "normalization", "activation": "linear",
                 "input_shape": list(net.input_shape), "output_shape": list(net.input_shape),
                 "params": int(n.kernel.size + n.bias.size)}
        if q is not None and q.normalization is not None:
            entry["quantization"] = _quantization(q.normalization)
        layers.append(entry)
    for i, (d, (shape_in, shape_out)) in enumerate(zip(net.layers, net.shapes)):
        if isinstance(d, network.Dense):
            entry = {"name": d.name, "type": "dense", "activation": d.activation,
                     "input_shape": [int(d.kernel.shape[0])], "output_shape": [int(d.kernel.shape[1])],
                     "params": int(d.kernel.size + d.bias.size)}
        else:
            entry = {"name": d.name, "type": f"{d.kind}pool" if isinstance(d, network.Pool) else (
                         "dw" if d.depthwise else "conv"),
                     "activation": getattr(d, "activation", "linear"), "input_shape": list(shape_in),
                     "output_shape": list(shape_out),
                     "params": 0 if isinstance(d, network.Pool) else int(d.kernel.size + d.bias.size)}
        if q is not None:
            entry["quantization"] = _quantization(q.layers[i])
        layers.append(entry)
    if q is not None:
        layers[0]["quantization"] = {"bits": q.input_bits, "output_scale": q.input_scale,
                                     "output_zero_point": q.input_zp, "calibrated_range": list(q.input_limvals)}
    meta = h.metadata
    return {"state": h.state, "network": net.name, "sdk_version": meta.get("sdk_version"),
            "emulator": meta.get("emulator"),
            "emulated": bool(meta.get("emulated")), "hw_arch": meta.get("hw_arch"), "layers": layers,
            "total_params": sum(layer["params"] for layer in layers), "calibset_size": meta.get("calibset_size"),
            "model_script": meta.get("model_script")}


def describe_har(args) -> None:
    from hailopipe.formats import har

    s = _har_summary(har.load(args.file))
    if args.json:
        _emit_json(s)
        return
    emulated = ", emulated" if s["emulated"] else ""
    made = f"{s['emulator']}, SDK {s['sdk_version']} layout" if s["emulator"] else f"SDK {s['sdk_version']}"
    print(f"HAR: {args.file} ({made}{emulated})\nState: {s['state']}\nTarget: {s['hw_arch']}")
    kinds = [layer["type"] for layer in s["layers"][1:]]
    counts = ", ".join(f"{kinds.count(k)} {name}" for k, name in (
        ("conv", "conv"), ("dw", "depthwise"), ("maxpool", "max pool"), ("avgpool", "average pool"),
        ("dense", "Dense"), ("normalization", "normalization")) if k in kinds)
    print(f"Network: {s['network']}, layers: {counts}; {s['total_params']:,} parameters")
    print(f"    {'layer':<16}{'input':>8}{'output':>10}  {'activation':<11}{'params':>10}")
    for layer in s["layers"]:
        shape_in = "x".join(map(str, layer.get("input_shape", []))) or "-"
        print(f"    {layer['name']:<16}{shape_in:>8}{'x'.join(map(str, layer['output_shape'])):>10}  "
              f"{layer.get('activation', '-'):<11}{layer['params']:>10,}")
    if s["state"] not in ("quantized_model", "compiled_model"):
        print("Quantization: none (not optimized yet)")
        return
    print("Quantization (scale, zero point as stored; real = scale * (q - zero point)):")
    for layer in s["layers"]:
        qi = layer["quantization"]
        lo, hi = qi["calibrated_range"]
        if layer["type"] == "input":
            head = f"{qi['bits']}-bit input"
        elif "weight_scale" not in qi:
            head = f"{qi['precision_mode']}, the input's qparams"
        else:
            ws = qi["weight_scale"]
            head = (f"{qi['precision_mode']}, weight scale {ws[0]:.4g}..{ws[1]:.4g} "
                    f"({'per channel' if qi['per_channel'] else 'per tensor'})")
        print(f"    {layer['name']:<16}{head}, output scale {qi['output_scale']:.6g}, "
              f"zero point {qi['output_zero_point']}, calibrated range [{lo:.6g}, {hi:.6g}]")
    if s["calibset_size"]:
        print(f"Calibration: {s['calibset_size']} images")
    if s["model_script"]:
        print("Model script:\n" + "".join(f"    {line}\n" for line in s["model_script"].splitlines()), end="")


# --- infer -----------------------------------------------------------------------------------

def infer(args) -> None:
    from hailopipe.runtime import FormatType, VDevice

    with VDevice() as vdevice:
        model = vdevice.create_infer_model(args.file)
        inp, out = model.input(), model.output()
        if len(inp.shape) != 3 or inp.shape[2] != 1 or inp.shape[0] != inp.shape[1] or len(out.shape) != 1:
            raise PipelineError(f"{args.file}: input {list(inp.shape)} / output {list(out.shape)} is not a "
                                "square single-channel image classifier")
        inp.set_format_type(FormatType.FLOAT32)
        out.set_format_type(FormatType.FLOAT32)
        lo, hi = inp.quant_infos[0].limvals_min, inp.quant_infos[0].limvals_max  # the stream's range: raw pixels 0-255
        prepared = [(path, *images.load_digit(path, args.invert, inp.shape[0])) for path in args.images]
        prepared = [(path, (lo + x * (hi - lo)).astype(np.float32), inverted) for path, x, inverted in prepared]
        results = []
        with model.configure() as cim:
            bindings = cim.create_bindings(output_buffers={out.name: np.empty(out.shape, np.float32)})
            for path, x, inverted in prepared:
                bindings.input().set_buffer(x)
                start = time.perf_counter()
                cim.run([bindings], 1000)
                elapsed = time.perf_counter() - start
                logits = bindings.output().get_buffer().astype(np.float64)
                p = np.exp(logits - logits.max())
                p /= p.sum()
                results.append({"file": path, "class": int(p.argmax()), "probability": float(p.max()),
                                "probabilities": [round(float(v), 6) for v in p], "time_ms": elapsed * 1e3,
                                "inverted": inverted})
    if args.json:
        _emit_json({"model": args.file, "results": results})
        return
    for r in results:
        note = "  (inverted: dark digit on light background)" if r["inverted"] else ""
        print(f"{r['file']}: {r['class']}  probability {r['probability']:.4f}  {r['time_ms']:.3f} ms{note}")


# --- run / benchmark -------------------------------------------------------------------------

def measure(hef, args, batch: int, fmt, label: str, header: str = "") -> dict:
    """Infer --frames frames (or for --time seconds) of --input frames in batches of `batch`; FPS and
    batch latency.  `header` is printed once the model is configured (bad input fails before any output)."""
    from hailopipe.runtime import FormatType, InferVStreams, InputVStreamParams, OutputVStreamParams, VDevice

    frames, seconds = args.frames, args.time
    with VDevice() as target:
        ng = target.configure(hef)[0]
        info = ng.get_input_vstream_infos()[0]
        ivp = InputVStreamParams.make(ng, format_type=fmt)
        ovp = OutputVStreamParams.make(ng, format_type=fmt)
        pipe = InferVStreams(ng, ivp, ovp)
        if header:
            print(header, flush=True)
        rng = np.random.default_rng(0)
        q = info.quant_info
        if fmt == FormatType.FLOAT32:
            data = rng.uniform(q.limvals_min, q.limvals_max, (batch, *info.shape)).astype(np.float32)
        else:
            dtype = np.uint16 if info.format.type == FormatType.UINT16 else np.uint8
            data = rng.integers(0, np.iinfo(dtype).max, (batch, *info.shape), dtype, endpoint=True)
        if args.input == "zeros":
            data = np.zeros_like(data)
        latencies, done = [], 0
        with pipe, ng.activate():
            pipe.infer({info.name: data})  # warm-up, untimed
            bar = tqdm(total=frames, unit="frames", desc=label, file=sys.stderr,  # a bar on a terminal only
                       disable=args.no_progress or not sys.stderr.isatty())
            start = time.perf_counter()
            while (done < frames) if frames else (time.perf_counter() - start < seconds):
                n = min(batch, frames - done) if frames else batch
                t = time.perf_counter()
                out = pipe.infer({info.name: data[:n]})
                latencies.append(time.perf_counter() - t)
                done += n
                bar.update(n)
            wall = time.perf_counter() - start
            bar.close()
    lat = np.array(latencies) * 1e3
    in_bytes = data[:1].nbytes
    out_bytes = next(iter(out.values()))[:1].nbytes
    return {"network_group": ng.name, "format_type": fmt.name, "batch_size": batch, "frames": done,
            "seconds": wall, "fps": done / wall, "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
            "send_mbit_s": done * in_bytes * 8 / wall / 1e6, "recv_mbit_s": done * out_bytes * 8 / wall / 1e6}


def _emit_rows(args, rows: list[dict]) -> bool:
    """--json / --csv output; False if neither was asked for."""
    if args.json:
        _emit_json(rows if len(rows) > 1 else rows[0])
    elif args.csv:
        print(",".join(rows[0]))
        for r in rows:
            print(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in r.values()))
    return bool(args.json or args.csv)


def run(args) -> None:
    from hailopipe.runtime import HEF, FormatType

    hef = HEF(args.file)
    fmt = FormatType[args.format_type.upper()]
    amount = f"{args.frames} frames" if args.frames else f"{args.time:g} s"
    header = "" if args.json or args.csv else (
        f"Running streaming inference ({args.file}) on the hailopipe emulator: {amount}, batch size "
        f"{args.batch_size}, {args.input} frames, format type {fmt.name}")
    r = measure(hef, args, args.batch_size, fmt, "run", header)
    if _emit_rows(args, [r]):
        return
    print(f"> Inference result:\n Network group: {r['network_group']}\n    Frames count: {r['frames']}\n"
          f"    FPS: {r['fps']:.2f}\n    Latency per batch of {r['batch_size']}: p50 {r['latency_p50_ms']:.4f} ms, "
          f"p99 {r['latency_p99_ms']:.4f} ms\n    Send Rate: {r['send_mbit_s']:.2f} Mbit/s\n"
          f"    Recv Rate: {r['recv_mbit_s']:.2f} Mbit/s")


def benchmark(args) -> None:
    from hailopipe.runtime import HEF, FormatType

    hef = HEF(args.file)
    _ = hef.qnet  # a real HEF stops here, before any output: it needs a Hailo device
    quiet = bool(args.json or args.csv)
    phases = [("raw", args.batch_size, FormatType.AUTO,
               f"Measuring FPS with raw frames (batch size {args.batch_size})"),
              ("float32", args.batch_size, FormatType.FLOAT32,
               f"Measuring FPS with FLOAT32 frames, host conversions included (batch size {args.batch_size})"),
              ("latency", 1, FormatType.AUTO, "Measuring latency with raw frames (batch size 1)")]
    if not quiet:
        print(f"Starting Measurements ({args.file}, hailopipe emulator)...")
    rows = []
    for mode, batch, fmt, title in phases:
        if not quiet:
            print(title)
        r = measure(hef, args, batch, fmt, mode)
        rows.append({"mode": mode, **r})
    if _emit_rows(args, rows):
        return
    raw, flt, lat = rows
    print("=======\nSummary\n=======")
    print(f"{'FPS     (raw, batch ' + str(raw['batch_size']) + ')':<34}= {raw['fps']:.2f}")
    print(f"{'        (float32, batch ' + str(flt['batch_size']) + ')':<34}= {flt['fps']:.2f}")
    print(f"{'Latency (batch 1)':<34}= p50 {lat['latency_p50_ms']:.4f} ms, p99 {lat['latency_p99_ms']:.4f} ms")


# --- the command line ------------------------------------------------------------------------

def _positive(kind):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return convert


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hailopipe", description="HailoRT-style tools for hailopipe's compiled models and HARs "
                "(and real Hailo HEFs, for parse-hef).")
    p.add_argument("--version", action="version", version=f"hailopipe {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("parse-hef", help="describe a compiled file (emulated or a real Hailo HEF)",
                       description="Print exactly what `hailortcli parse-hef` prints (network groups, input/output "
                       "vstreams with format, order and shape), in the text of the HailoRT generation that serves "
                       "the HEF's architecture: 4.x for Hailo-8/8R/8L, 5.x for Hailo-10/15.")
    s.add_argument("file", help="compiled file (.hef)")
    s.add_argument("--hailort", choices=("4", "5"), help="print as this HailoRT generation's hailortcli does")
    s.add_argument("--parse-streams", action="store_true", help="also the stream infos (the device side of each "
                   "vstream: device order and padded shape), as hailortcli parse-hef --parse-streams")
    s.add_argument("--verbose", action="store_true", help="also the file's header and checksum, each vstream's "
                   "quantization and, for an emulated file, its layers")
    s.add_argument("--json", action="store_true", help="machine-readable output, everything")
    s.set_defaults(func=describe_hef)

    from hailopipe.formats.compatibility import DEVICES

    s = sub.add_parser("check", help="can a device run a compiled file, and with which HailoRT",
                       description="Whether HailoRT would load FILE (a real HEF or hailopipe's emulated file) on a "
                       "--device, and why not: the checks HailoRT makes (architecture, header version, required "
                       "extensions, device generation), release by release, from hailort's sources, with the status "
                       "HailoRT returns.  Exit status 0 if compatible, 1 if not (or no rule is known), 2 for bad "
                       "input.  An emulated file cannot be loaded by a real device at all; the check then says "
                       "what hailopipe's emulated VDevice decides.")
    s.usage_status = 2
    s.add_argument("file", help="compiled file (.hef)")
    s.add_argument("--device", required=True, choices=list(DEVICES), metavar="ARCH",
                   help=f"the device: {', '.join(DEVICES)}")
    s.add_argument("--hailort", metavar="X.Y[.Z]", help="one HailoRT release (default: every release known, "
                   "4.15.0 to 5.2.0)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=check)

    s = sub.add_parser("parse-har", help="describe a HAR", description="State, layers, shapes, parameter "
                       "counts and per-layer quantization (precision mode, scales, zero points, calibrated ranges).")
    s.add_argument("file", help="Hailo archive (.har)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=describe_har)

    s = sub.add_parser("infer", help="classify digit images",
                       description="Classify PNG/JPEG/NPY digit images of any size, grayscale or colour, prepared "
                       "as MNIST was: grayscale, white digit on black, longer side 20 px, centred by mass in 28x28, "
                       "then fed as pixel values 0-255 (the input stream's range).  Prints class, probability (softmax "
                       "of the dequantized logits) and the inference time per image.")
    s.add_argument("file", help="compiled file (.hef) made by hailopipe")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or NPY file")
    s.add_argument("--invert", choices=images.INVERT_CHOICES, default="auto",
                   help="make the digit white on black: auto (default) inverts when the image border is mostly "
                   "light, i.e. dark ink on light paper; yes / no force it")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=infer)

    for name, func, what in (("run", run, "frames per second and latency at one batch size"),
                             ("benchmark", benchmark, "FPS with raw and FLOAT32 frames, and batch-1 latency")):
        s = sub.add_parser(name, help=what, description=f"{what[0].upper()}{what[1:]}, like hailortcli {name}; "
                           "a progress bar on stderr.")
        s.add_argument("file", help="compiled file (.hef) made by hailopipe")
        amount = s.add_mutually_exclusive_group()
        amount.add_argument("--frames", "-c", type=_positive(int), help="frames to infer (per measurement)")
        amount.add_argument("--time", "-t", type=_positive(float), default=3.0,
                            help="seconds to run (per measurement) when --frames is not given; default 3")
        s.add_argument("--batch-size", type=_positive(int), default=8, help="frames per infer call (default 8)")
        s.add_argument("--input", choices=("random", "zeros"), default="random", help="input frames (default random)")
        if name == "run":
            s.add_argument("--format-type", choices=("auto", "uint8", "uint16", "float32"), default="auto",
                           help="host buffer format (default auto: the stream's raw integers)")
        out = s.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="machine-readable output")
        out.add_argument("--csv", action="store_true", help="CSV output")
        s.add_argument("--no-progress", action="store_true", help="no progress bar")
        s.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> None:
    def _main():
        args = build_parser().parse_args(argv)
        args.func(args)

    run_main(_main)


if __name__ == "__main__":
    main()
