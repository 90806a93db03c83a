"""The same bytes on any x86-64 CPU: every variant of the arithmetic this machine can stand in for.

1. Train: a reduced model trained in a fresh process under each oneDNN instruction-set level this
   CPU has (`ONEDNN_MAX_CPU_ISA`, from its best down to AVX2, not pinned by the stage, so the test
   shows that the arithmetic itself does not depend on it), on one core and on two
   (`os.sched_setaffinity`), and as the stage runs it (`model.pin_cpu`): the exported model.h5 and
   model.tflite are the same bytes in every one.
2. Everything after train: the parse, optimize (level 2: calibration, fine-tune, bias
   correction), analyze_noise, compile and evaluate stages, run on that model under each engine
   kernel (`HAILOPIPE_KERNEL`), each OpenBLAS core type this CPU can run (`OPENBLAS_CORETYPE`), one
   and two BLAS threads, one core: every HAR, the compiled file and every metric are the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hailopipe.engine import native
from tests.conftest import ROOT, SUBSET

FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
# oneDNN's instruction-set levels, best first, each with the CPU flag it needs.
ONEDNN_ISAS = [("AVX512_CORE_AMX", "amx_tile"), ("AVX512_CORE_FP16", "avx512_fp16"),
               ("AVX512_CORE_BF16", "avx512_bf16"), ("AVX512_CORE_VNNI", "avx512_vnni"),
               ("AVX512_CORE", "avx512f"), ("AVX2_VNNI", "avx_vnni"), ("AVX2", "avx2")]
# OpenBLAS core types (DYNAMIC_ARCH), each with the flags it needs.
OPENBLAS_CORES = [("SapphireRapids", {"amx_tile", "avx512_fp16"}), ("Cooperlake", {"avx512_bf16"}),
                  ("SkylakeX", {"avx512f", "avx512bw", "avx512vl"}), ("Haswell", {"avx2", "fma"}),
                  ("Sandybridge", {"avx"}), ("Nehalem", {"sse4_2"})]
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
cfg = model.TrainConfig(hidden=(32, 16), epochs=2, batch_size=64, dropout=0.1)
net, _ = model.train(cfg, x, y, xv, yv)
paths = model.export(net, sys.argv[1])
print(" ".join(hashlib.md5(open(paths[k], "rb").read()).hexdigest() for k in ("h5", "tflite")))
"""


def _train(out: Path, **env) -> str:
    code = TRAIN.format(root=str(ROOT), subset=str(SUBSET))
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **env})
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.split("\n")[-2]


def train_variants() -> dict[str, dict]:
    variants = {"default": {}}
    variants.update({f"ONEDNN_MAX_CPU_ISA={isa}": {"ONEDNN_MAX_CPU_ISA": isa}
                     for isa, flag in ONEDNN_ISAS if flag in FLAGS})
    variants["one core"] = {"CORES": "0"}
    if len(os.sched_getaffinity(0)) >= 2:
        variants["two cores"] = {"CORES": ",".join(map(str, sorted(os.sched_getaffinity(0))[:2]))}
    variants["as the stage pins it"] = {"PIN": "1"}
    return variants


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{variant: 'md5(model.h5) md5(model.tflite)'} and the default variant's model folder."""
    root = tmp_path_factory.mktemp("train")
    hashes = {name: _train(root / str(i), **env) for i, (name, env) in enumerate(train_variants().items())}
    return hashes, root / "0"


def test_training_gives_the_same_bytes_under_every_variant(trained):
    hashes, _ = trained
    assert len(hashes) >= 4 and len(set(hashes.values())) == 1, hashes


STAGES = ["parse", "optimize", "noise", "compile", "evaluate"]
OUTPUTS = ["models/mnist.har", "models/mnist_quantized.har", "models/mnist.hef", "models/mnist_compiled.har",
           "metrics/noise.json", "metrics/noise_snr.csv", "metrics/compile.json", "metrics/evaluate.json",
           "metrics/predictions.csv"]


def _stage_repo(dest: Path, model_dir: Path, **optimize) -> Path:
    """The sources, a small data/mnist.npz (the real-digit subset) and the trained model at `dest`."""
    for d in ("stages", "hailopipe"):
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["calibration"]["size"] = 200
    params["optimize"]["finetune"]["epochs"] = 1
    params["optimize"].update(optimize)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    (dest / "models" / "float").mkdir(parents=True)
    shutil.copy(model_dir / "model.tflite", dest / "models" / "float" / "model.tflite")
    (dest / "data").mkdir()
    with np.load(SUBSET) as s:
        np.savez(dest / "data" / "mnist.npz", **{k: s[k] for k in s.files})
    return dest


def _run_stages(repo: Path, **env) -> dict[str, str]:
    for stage in STAGES:
        cmd = [sys.executable, "-m", f"stages.{stage}"]
        if env.get("CORES"):
            cmd = ["taskset", "-c", env["CORES"], *cmd]
        p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(repo), **env})
        assert p.returncode == 0, (stage, env, p.stderr[-3000:])
    return {o: hashlib.md5((repo / o).read_bytes()).hexdigest() for o in OUTPUTS}


def after_train_variants() -> dict[str, dict]:
    variants = {"default": {}, "numpy engine kernel": {"HAILOPIPE_KERNEL": "numpy"},
                "one BLAS thread": {"OPENBLAS_NUM_THREADS": "1"}}
    if len(native.paths()) > 1:  # the default runs the best path: the others too
        variants.update({f"{path} engine path": {"HAILOPIPE_KERNEL": path} for path in native.paths()[1:]})
    variants.update({f"OPENBLAS_CORETYPE={core}": {"OPENBLAS_CORETYPE": core, "HAILOPIPE_KERNEL": "numpy"}
                     for core, needs in OPENBLAS_CORES if needs <= FLAGS})
    if shutil.which("taskset"):
        variants["one core"] = {"CORES": "0"}
    return variants


@pytest.mark.parametrize("optimize", [
    {},  # the default: a8_w8, optimization level 2 (statistics, fine-tune, bias correction)
    {"activation_clipping": {"mode": "mse", "clipping_values": [0.0, 99.99]}, "precision": {"fc2": "a16_w16"}},
], ids=["default", "mse-a16"])
def test_everything_after_train_gives_the_same_bytes_under_every_variant(trained, tmp_path, optimize):
    _, model_dir = trained
    results = {}
    for i, (name, env) in enumerate(after_train_variants().items()):
        repo = _stage_repo(tmp_path / str(i), model_dir, **optimize)
        results[name] = _run_stages(repo, **env)
    first = next(iter(results.values()))
    differ = {name: [o for o in OUTPUTS if r[o] != first[o]] for name, r in results.items()}
    assert len(results) >= 5 and not any(differ.values()), differ
