"""The hailo backend's optimize step: the model script it loads, and what the DFC actually applied.

The script is `quantization.model_script.render`'s (shared with the emulator), sent without its
comment lines (not documented model-script syntax; they are reported instead), and held to two rules:

- Model Zoo practice: none of the Model Zoo's scripts enables `bias_correction` and `finetune`
  together (every one of the 23 that enable bias correction disables finetune), so a script that
  would is sent with bias correction disabled, and says so;
- its `normalization([mean...], [std...])` is the one `OptimizeConfig.normalization` asks for: the
  calibration and inference data are raw pixels that it maps to the model's domain.

The finetune line stays when there is no GPU.  Every script this backend writes names its level
(`model_optimization_flavor(optimization_level=N)`), and the DFC keeps an explicit level (a reading
of DFC 3.33.1's `get_flavor_config`; its "Reducing optimization level to 0 ... no available GPU" is
for the default level): Hailo's own hailo-whisper script (level 2 + `finetune, policy=enabled`)
ran Quantization-Aware Fine-Tuning on a CPU-only machine.  Dropping the line would not stop it; only
a lower level would, and that would make the quantized HAR depend on the machine instead of on
params.yaml.  This network is small enough to fine-tune on a CPU; `applied` says it ran without a GPU.

`applied(...)` is what the DFC did, from its log: "Reducing optimization level to N", and per
algorithm "Starting <name>" / "Model Optimization Algorithm <name> is done" / "<name> skipped"
(names as DFC logs print them: "Bias Correction", "Fine Tune" or "Quantization-Aware Fine-Tuning",
"Adaround", "Equalization").  An algorithm the log does not mention is taken from the script's
explicit policy, else from the level's default (1: bias correction; 2: finetune, bias correction
skipped, as DFC logs at level 2 show; 3-4: adaround); `from` says which.
"""

from __future__ import annotations

import re

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.quantization import model_script
from hailopipe.quantization.config import OptimizeConfig

_NORMALIZATION = re.compile(r"normalization\(\s*\[([^\]]*)\]\s*,\s*\[([^\]]*)\]")
_POLICY = re.compile(r"^\s*(pre|post)_quantization_optimization\(\s*(\w+)\s*,(.*)\)\s*$")
_LEVEL = re.compile(r"model_optimization_flavor\([^)]*optimization_level\s*=\s*(-?\d+)")
DFC_DEFAULT_LEVEL = 2  # "Using default optimization level of 2" (reference, Levels)
_ALGORITHMS = {"bias_correction": ("Bias Correction",), "finetune": ("Fine Tune", "Quantization-Aware Fine-Tuning"),
               "adaround": ("Adaround", "AdaRound"), "equalization": ("Equalization",)}


def script(net, cfg: OptimizeConfig, ranges=None) -> tuple[str, list[str]]:
    """(the script to load, notes for the report) per the module docstring."""
    lines = model_script.render(net, cfg, ranges).splitlines()
    notes = [f"model script comment, not sent to the SDK: {line.lstrip('# ')}"
             for line in lines if line.lstrip().startswith("#")]
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    policies = policies_of("\n".join(lines))
    if policies.get("bias_correction") and policies.get("finetune"):
        lines = [re.sub(r"policy\s*=\s*enabled", "policy=disabled", line)
                 if _POLICY.match(line) and _POLICY.match(line).group(2) == "bias_correction" else line
                 for line in lines]
        notes.append("bias_correction disabled: finetune is enabled, and no Model Zoo script enables both")
    text = "".join(f"{line}\n" for line in lines)
    check_normalization(text, cfg.normalization, "the generated model script")
    return text, notes


def check_normalization(text: str, expected, source) -> None:
    """One normalization line, with `expected` (means, stds) when given."""
    found = _NORMALIZATION.findall(text)
    got = [[float(v) for v in part.split(",") if v.strip()] for pair in found for part in pair]

    def same(a, b) -> bool:  # as written with 6 significant digits
        return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-5, atol=0))

    if len(found) != 1 or (expected is not None and not (same(got[0], expected[0]) and same(got[1], expected[1]))):
        have = "; ".join(f"normalization([{m}], [{s}])" for m, s in found) or "no normalization"
        want = "" if expected is None else f" normalization({list(expected[0])}, {list(expected[1])})"
        raise PipelineError(f"{source}: the hailo backend feeds the SDK raw pixels 0-255 and needs one{want} "
                            f"line in the model script; it has {have}")


def policies_of(text: str) -> dict[str, bool]:
    """algorithm -> policy=enabled?, for the script's explicit policy lines (the last one wins)."""
    out = {}
    for line in text.splitlines():
        m = _POLICY.match(line)
        policy = re.search(r"policy\s*=\s*(\w+)", m.group(3)) if m else None
        if policy:
            out[m.group(2)] = policy.group(1) == "enabled"
    return out


def _from_log(messages: list[str], names: tuple[str, ...]) -> bool | None:
    """True if the log says an algorithm of these names ran, False if it says it was skipped, else None."""
    verdict = None
    for text in messages:
        for name in map(re.escape, names):
            if re.fullmatch(rf"Starting {name}|(Model Optimization Algorithm )?{name} is done\b.*", text):
                verdict = True
            elif re.fullmatch(rf"{name} skipped", text):
                verdict = False
    return verdict


def applied(text: str, cfg: OptimizeConfig, messages: list[str], gpu: bool | None) -> tuple[dict, list[str]]:
    """(what the DFC applied, warnings about it), per the module docstring; `messages` are the
    DFC's log lines during optimize, in order.  `requested_optimization_level` is the script's, or
    the DFC's default when the script names none."""
    named = _LEVEL.search(text)
    requested = int(named.group(1)) if named else DFC_DEFAULT_LEVEL
    reduced = [int(n) for m in messages for n in re.findall(r"Reducing optimization level to (-?\d+)", m)]
    level = reduced[-1] if reduced else requested
    explicit = policies_of(text)
    defaults = {"bias_correction": level == 1, "finetune": level >= 2, "adaround": level >= 3, "equalization": False}
    out = {"optimization_level": level, "requested_optimization_level": requested,
           "activation_clipping": cfg.clipping_mode}
    seen = False
    for algo, names in _ALGORITHMS.items():
        logged = _from_log(messages, names)
        seen |= logged is not None and algo in ("bias_correction", "finetune")
        out[algo] = logged if logged is not None else explicit.get(algo, defaults[algo])
    out.update(gpu=gpu, reduced=bool(reduced), **{"from": "dfc log" if seen else "model script"})
    notes = []
    if out["finetune"] and gpu is False:
        notes.append("finetune ran without a GPU (on the CPU): slow for large networks; set "
                     "optimize.optimization_level below 2 to skip it")
    if explicit.get("finetune") and not out["finetune"]:
        notes.append("finetune was enabled in the model script but the DFC skipped it"
                     + (" (no GPU)" if gpu is False else ""))
    if out["bias_correction"] and out["finetune"]:
        notes.append("the DFC ran bias_correction and finetune together, which no Model Zoo script asks for")
    return out, notes
