"""The `hailopipe` command end to end: each subcommand through the installed console script, in a
subprocess, on files built here from the fitted networks, on the real Hailo HEF and on the digit
images of tests/data/digits (written by tests/data/make_images.py)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hailopipe import images
from hailopipe.formats import ehef, har
from hailopipe.runtime import InferModel
from tests.conftest import ROOT

REAL_HEF = ROOT.parent / "shared/data/hef/mnist_cnn.hef"
PIPELINE_HEF = ROOT / "models" / "mnist.hef"  # the DVC pipeline's output, when it has been run
TEST_HEF = ROOT / "tests" / "data" / "mnist_128x64.hef"  # a trained model committed for tests (make_model.py)
DIGITS = sorted((ROOT / "tests" / "data" / "digits").iterdir())
SCRIPT = shutil.which("hailopipe", path=os.path.dirname(sys.executable)) or shutil.which("hailopipe")
needs_real_hef = pytest.mark.skipif(not REAL_HEF.is_file(), reason=f"real HEF not present: {REAL_HEF}")


def cli(*args, expect: int = 0) -> subprocess.CompletedProcess:
    assert SCRIPT, "the `hailopipe` console script is not installed: run `pip install -e .`"
    p = subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == expect, f"hailopipe {args}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def label_of(path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory, fitted_net, fitted_norm_net, fitted_qnet):
    d = tmp_path_factory.mktemp("cli")
    (d / "m.hef").write_bytes(ehef.compile_network(fitted_qnet, "hailo8l"))
    har.save(har.Har("hailo_model", fitted_net, metadata={"hw_arch": "hailo8l"}), d / "float.har")
    har.save(har.Har("quantized_model", fitted_norm_net, fitted_qnet, {"hw_arch": "hailo8l", "calibset_size": 200,
                                                                   "model_script": "normalization1 = normalization([0], [255])\n"}),
             d / "q.har")
    return d


def test_console_script_and_module_agree():
    assert SCRIPT, "the `hailopipe` console script is not installed: run `pip install -e .`"
    via_module = subprocess.run([sys.executable, "-m", "hailopipe.cli", "--version"], capture_output=True, text=True)
    assert via_module.returncode == 0 and cli("--version").stdout == via_module.stdout


@pytest.mark.parametrize("command", [None, "parse-hef", "parse-har", "infer", "run", "benchmark"])
def test_help(command):
    out = cli(*([command] if command else []), "--help").stdout
    assert out.startswith("usage: hailopipe") and (command or "COMMAND") in out


def test_parse_hef_emulated(files):
    meta = ehef.load(files / "m.hef").meta
    p = cli("parse-hef", files / "m.hef")
    assert p.stdout == ("Architecture HEF was compiled for: HAILO8L\n"  # hailortcli 4.x: a Hailo-8L file
                        "Network group name: net, Single Context\n"
                        "    Network name: net/net\n"
                        "        VStream infos:\n"
                        "            Input  net/input_layer1 UINT8, NHWC(28x28x1)\n"
                        "            Output net/fc3 UINT8, NC(10)\n")
    assert "emulated compiled file" in p.stderr and "a Hailo device cannot load it" in p.stderr
    text = cli("parse-hef", files / "m.hef", "--hailort", "5", "--verbose").stdout
    assert "Emulated HEF" in text and "a Hailo device cannot load it" in text
    assert "HEF Compatible for: HAILO8L, HAILO8\n" in text
    assert f"HEF Compiler Version: {meta['compiler']}" in text
    assert f"qp_zp={meta['outputs'][0]['qp_zp']}," in text
    assert "fc1: 784 -> 64, relu, a8_w8, 50,176 MACs" in text
    js = json.loads(cli("parse-hef", files / "m.hef", "--json").stdout)
    (group,) = js["network_groups"]
    assert js["emulated"] is True and js["hw_arch"] == "HAILO8L" and group["name"] == "net"
    for got, want in zip(group["inputs"] + group["outputs"], meta["inputs"] + meta["outputs"]):
        assert (got["name"], got["format_type"], got["order"], got["shape"]) == \
               (want["name"], want["format_type"], want["order"], want["shape"])
        assert got["quant_info"] == {"qp_zp": want["qp_zp"], "qp_scale": want["qp_scale"],
                                     "limvals_min": want["limvals_min"], "limvals_max": want["limvals_max"]}


@needs_real_hef
def test_parse_hef_real():
    """Byte for byte what hailortcli parse-hef of HailoRT 4.x (the hailo8 branch, which serves a
    Hailo-8 HEF) prints for this file; 5.x's text with --hailort 5; the rest with --verbose."""
    p = cli("parse-hef", REAL_HEF)
    assert p.stdout == ("Architecture HEF was compiled for: HAILO8\n"
                        "Network group name: MNIST_CNN, Single Context\n"
                        "    Network name: MNIST_CNN/MNIST_CNN\n"
                        "        VStream infos:\n"
                        "            Input  MNIST_CNN/input_layer1 UINT8, NHWC(32x32x1)\n"
                        "            Output MNIST_CNN/maxpool3 UINT8, FCR(4x4x16)\n") and p.stderr == ""
    five = cli("parse-hef", REAL_HEF, "--hailort", "5").stdout
    assert five.startswith("HEF Compatible for: HAILO8\nHEF Compiler Version: 3.27.0\n"
                           "Network group name: MNIST_CNN, Single Context\n")
    text = cli("parse-hef", REAL_HEF, "--verbose").stdout
    assert "Emulated" not in text and "header v0, md5" in text and "(verified)" in text
    assert "Quantization: qp_scale=0.035731196, qp_zp=0, limvals=[0, 9.111455]\n" in text
    js = json.loads(cli("parse-hef", REAL_HEF, "--json").stdout)
    assert js["emulated"] is False and js["hw_arch"] == "HAILO8P" and js["sdk_version"] == "3.27.0"
    assert js["network_groups"][0]["outputs"][0]["shape"] == [4, 4, 16]


def test_parse_har(files, fitted_net, fitted_qnet):
    params = sum(entry.kernel.size + entry.bias.size for entry in fitted_net.layers) + 2  # + normalization1's
    text = cli("parse-har", files / "q.har").stdout
    assert "State: quantized_model" in text and "Target: hailo8l" in text and f"{params:,} parameters" in text
    assert "Calibration: 200 images" in text and "normalization1 = normalization([0], [255])" in text
    assert "layers: 3 Dense, 1 normalization; " in text
    js = json.loads(cli("parse-har", files / "q.har", "--json").stdout)
    assert js["total_params"] == params and [entry["name"] for entry in js["layers"]] == [
        "input_layer1", "normalization1", "fc1", "fc2", "fc3"]
    assert js["layers"][1]["quantization"]["output_scale"] == np.float32(1 / 255)
    for entry, layer in zip(js["layers"][2:], fitted_qnet.layers):
        qi = entry["quantization"]
        assert qi["precision_mode"] == "a8_w8" and qi["output_zero_point"] == layer.out_zp
        assert qi["output_scale"] == layer.out_scale and qi["calibrated_range"] == list(layer.limvals)
        assert qi["weight_scale"] == [float(layer.w_scale.min()), float(layer.w_scale.max())]
        assert entry["params"] == layer.kernel.size + layer.kernel.shape[1]
    assert js["layers"][0]["quantization"]["output_scale"] == fitted_qnet.input_scale
    float_text = cli("parse-har", files / "float.har").stdout
    assert "State: hailo_model" in float_text and "Quantization: none" in float_text


LOSSLESS = ("mnist", "paper", "alpha", "deep", "u8", "float")  # styles that keep the 28x28 pixels


def test_infer_json_is_the_api_on_prepared_images(files, subset):
    """Every style of image gives the class and probability of the API on the prepared image, and
    the preparation recovers the digit: the prepared pixels match the original MNIST array (up to
    rounding and a few faint edge pixels for the lossless styles, correlation >= 0.7 for the
    resized, recoloured, JPEG ones) and the model's class mostly matches its class for the original."""
    js = json.loads(cli("infer", files / "m.hef", *DIGITS, "--json").stdout)
    assert [r["file"] for r in js["results"]] == [str(p) for p in DIGITS]
    model = InferModel(files / "m.hef")
    originals = {c: subset["x_val"][np.nonzero(subset["y_val"] == c)[0][0]] / np.float32(255) for c in range(10)}
    agree = 0
    for r, path in zip(js["results"], DIGITS):
        x, inverted = images.load_digit(path)
        logits = model.run_float(x * np.float32(255))[0].astype(np.float64)  # the stream takes raw pixels
        p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert r["class"] == int(p.argmax()) and r["probability"] == pytest.approx(p.max(), abs=1e-12)
        assert sum(r["probabilities"]) == pytest.approx(1, abs=1e-4) and r["time_ms"] > 0
        style = path.stem.split("_")[0]
        assert r["inverted"] == inverted == (style in ("paper", "photo", "colour", "alpha", "float"))
        original = originals[label_of(path)]
        if style in LOSSLESS:  # the same pixels, but for faint ones outside the digit's box (cropped)
            differ = np.abs(x[..., 0] - original) > 1.5 / 255
            assert differ.sum() <= 8 and (original[differ] < images.INK).all(), path.name
        else:
            assert np.corrcoef(x.ravel(), original.ravel())[0, 1] >= 0.7, path.name
        agree += r["class"] == model.run_float(original[..., None] * np.float32(255)).argmax()
    assert agree >= len(DIGITS) - 4, f"only {agree}/{len(DIGITS)} styled images match the original digit's class"


def test_infer_text(files):
    lines = cli("infer", files / "m.hef", DIGITS[0], DIGITS[-1]).stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{DIGITS[0]}: ") and " ms" in lines[0]
    assert "probability 0." in lines[0] or "probability 1.0000" in lines[0]


@pytest.mark.parametrize("model", [
    TEST_HEF,
    pytest.param(PIPELINE_HEF, marks=pytest.mark.skipif(not PIPELINE_HEF.is_file(),
                                                        reason="models/mnist.hef not built (run the DVC pipeline)")),
], ids=["test-model", "pipeline-model"])
def test_infer_real_digits_with_a_trained_model(model):
    js = json.loads(cli("infer", model, *DIGITS, "--json").stdout)
    correct = sum(r["class"] == label_of(p) for r, p in zip(js["results"], DIGITS))
    assert correct >= len(DIGITS) - 1, f"{correct}/{len(DIGITS)} correct"


@pytest.mark.parametrize("channels", [3, 4])
def test_colour_npy_is_read_as_luma(tmp_path, subset, channels):
    """images.read_gray on colour NPY arrays: ITU-R 601 luma; transparent pixels become the
    background opposite to the ink (here: white ink on clear -> black background)."""
    d = subset["x_val"][0].astype(np.float64) / 255
    rgb = np.stack([d, d * 0.5, np.zeros_like(d)], axis=-1)
    if channels == 4:
        rgb = np.concatenate([np.ones_like(rgb), (d > 0)[..., None].astype(np.float64)], axis=-1)
    np.save(tmp_path / "c.npy", rgb.astype(np.float32))
    gray = images.read_gray(tmp_path / "c.npy")
    want = (d > 0) * 1.0 if channels == 4 else 0.299 * d + 0.587 * 0.5 * d
    np.testing.assert_allclose(gray, want, atol=1e-6)


@pytest.mark.parametrize("invert,style", [("no", "paper_2.png"), ("yes", "mnist_0.png")])
def test_forcing_the_wrong_polarity_finds_no_digit(files, invert, style):
    err = cli("infer", files / "m.hef", ROOT / "tests/data/digits" / style, "--invert", invert, expect=1).stderr
    assert err.startswith("error: ") and "no digit found" in err


def test_run_text_json_csv(files):
    p = cli("run", files / "m.hef", "--frames", 50, "--batch-size", 8)
    assert "Frames count: 50" in p.stdout and "FPS: " in p.stdout and "p99" in p.stdout
    assert p.stderr == ""  # no progress bar in a log: stderr is not a terminal
    r = json.loads(cli("run", files / "m.hef", "-c", 20, "--batch-size", 3, "--format-type", "float32",
                       "--input", "zeros", "--json", "--no-progress").stdout)
    assert (r["frames"], r["batch_size"], r["format_type"]) == (20, 3, "FLOAT32")
    assert r["fps"] > 0 and 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
    rows = list(csv.DictReader(io.StringIO(cli("run", files / "m.hef", "--time", 0.2, "--csv", "--no-progress").stdout)))
    assert len(rows) == 1 and int(rows[0]["frames"]) > 0 and rows[0]["batch_size"] == "8"


def test_progress_bar_on_a_terminal(files):
    """The bar is drawn when stderr is a terminal (a pseudo-terminal here), and only then."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    p = subprocess.run([SCRIPT, "run", str(files / "m.hef"), "--frames", "50", "--batch-size", "8"], stdout=subprocess.PIPE,
                       stderr=slave, cwd=ROOT, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert p.returncode == 0 and "Frames count: 50" in p.stdout
    assert "50/50" in b"".join(chunks).decode(errors="replace")


def test_benchmark(files):
    text = cli("benchmark", files / "m.hef", "--frames", 16, "--no-progress").stdout
    assert "Summary" in text and "FPS     (raw, batch 8)" in text and "Latency (batch 1)" in text
    rows = json.loads(cli("benchmark", files / "m.hef", "--frames", 16, "--batch-size", 4, "--json",
                          "--no-progress").stdout)
    assert [(r["mode"], r["batch_size"], r["format_type"], r["frames"]) for r in rows] == \
           [("raw", 4, "AUTO", 16), ("float32", 4, "FLOAT32", 16), ("latency", 1, "AUTO", 16)]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "text.png").write_text("hello")
    (d / "trunc.jpg").write_bytes((ROOT / "tests/data/digits/photo_4.jpg").read_bytes()[:120])
    np.save(d / "batch.npy", np.zeros((3, 28, 28), np.uint8))
    np.save(d / "nan.npy", np.full((28, 28), np.nan))
    np.save(d / "range.npy", np.full((28, 28), 300.0))
    np.save(d / "blank.npy", np.zeros((28, 28), np.uint8))
    np.save(d / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    os.mkfifo(d / "fifo")
    return d


DIGIT = "tests/data/digits/mnist_0.png"
BAD_CASES = [
    (("parse-hef", "{bad}/missing.hef"), "file not found"),
    (("parse-hef", "{bad}/text.png"), "too short for a compiled model"),
    (("parse-hef", "{files}/q.har"), "not a compiled model"),
    (("parse-har", "{files}/m.hef"), "not a readable HAR"),
    (("infer", "{files}/q.har", DIGIT), "not a compiled model"),
    (("infer", "{files}/m.hef", "{bad}/text.png"), "not a PNG, JPEG or NPY image"),
    (("infer", "{files}/m.hef", "{bad}/trunc.jpg"), "unreadable image"),
    (("infer", "{files}/m.hef", "{bad}/batch.npy"), "is not one image"),
    (("infer", "{files}/m.hef", "{bad}/nan.npy"), "NaN"),
    (("infer", "{files}/m.hef", "{bad}/range.npy"), "expected [0, 1] or [0, 255]"),
    (("infer", "{files}/m.hef", "{bad}/blank.npy"), "no digit found"),
    (("infer", "{files}/m.hef", "{bad}/objects.npy"), "unreadable NPY"),
    (("infer", "{files}/m.hef", "{bad}"), "is a directory"),
    (("infer", "{files}/m.hef", "{bad}/fifo"), "not a regular file"),
    (("run", "{bad}/fifo"), "not a regular file"),
    (("infer", "{files}/m.hef", DIGIT, "--invert", "maybe"), "invalid choice"),
    (("run", "{files}/m.hef", "--frames", "0"), "must be > 0"),
    (("run", "{files}/m.hef", "--format-type", "uint16", "--frames", "5"), "format type UINT16 is not offered"),
    (("benchmark", "{files}/m.hef", "--json", "--csv"), "not allowed with argument"),
    (("frobnicate",), "invalid choice"),
]


@pytest.mark.parametrize("args,words", BAD_CASES)
def test_bad_input_is_one_line(files, bad, args, words):
    p = cli(*(a.format(files=files, bad=bad) for a in args), expect=1)
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert words in p.stderr and p.stdout == ""


@needs_real_hef
@pytest.mark.parametrize("command", [("infer", DIGIT), ("run", "--frames", "5"), ("benchmark",)])
def test_real_hef_needs_a_hailo_device(command):
    p = cli(command[0], REAL_HEF, *command[1:], expect=1)
    assert p.stderr.count("\n") == 1 and "needs a Hailo device and HailoRT" in p.stderr and p.stdout == ""


def test_photographed_digits_read_as_well_as_clean_ones(tmp_path):
    """Digits photographed on paper (tests/data/make_photos.py: uneven light, sensor noise, blur,
    JPEG, 100-250 px) are classified within 5 points of the same digits given clean, by a real
    trained model (tests/data/mnist_128x64.hef); before the background removal, Otsu's threshold and
    the largest-component crop, a speck of noise stretched the crop and most photos failed."""
    from hailopipe.images import load_digit
    from hailopipe.runtime import InferModel
    from tests.data.make_photos import photo

    with np.load(ROOT / "tests/data/mnist_subset.npz") as s:
        x, y = s["x_val"][:200], s["y_val"][:200]
    rng = np.random.default_rng(1)
    clean, photos = [], []
    for i, d in enumerate(x):
        (tmp_path / f"{i}.png").write_bytes(_png(d))
        (tmp_path / f"{i}.jpg").write_bytes(photo(d, rng))
        clean.append(load_digit(tmp_path / f"{i}.png")[0])
        photos.append(load_digit(tmp_path / f"{i}.jpg")[0])
    model = InferModel(ROOT / "tests/data/mnist_128x64.hef")
    acc_clean = (model.run_float(np.stack(clean)).argmax(1) == y).mean()
    acc_photo = (model.run_float(np.stack(photos)).argmax(1) == y).mean()
    assert acc_clean > 0.95 and acc_photo >= acc_clean - 0.05, (acc_clean, acc_photo)


def _png(digit) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("x, text", [(120.0, "120"), (-128.0, "-128"), (0.0, "0"), (1200.0, "1200"), (255.0, "255"),
                                     (150.5, "150.5"), (float(np.float32(0.4282797)), "0.4282797")])
def test_quantization_numbers_print_whole_numbers_as_integers(x, text):
    """parse-hef's numbers: the shortest text that reads back as the same float32, a zero point as
    an integer (it once printed a zero point of 120 as 1.2e+02)."""
    from hailopipe.formats.parse_hef import _num

    assert _num(x) == text
