"""What the optimize step is asked to do: `OptimizeConfig` (and `FinetuneConfig` for level 2).

The fields are the SDK's model-script controls (`model_script` writes them in its spelling); what
each does is in `optimizer`'s docstring.  `check(cfg, layer_names)` raises a PipelineError naming the
field and the value the optimizer cannot use; the pipeline's stages check params.yaml (and name its
keys) before a config is ever built, so this guards callers of the Python API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hailopipe.errors import PipelineError
from hailopipe.quantization import arithmetic

LEVELS = (0, 1, 2)
CLIPPING_MODES = ("minmax", "percentile", "mse")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 4
    learning_rate: float = 1e-5
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class OptimizeConfig:
    calib_size: int = 2000
    per_channel: bool = True
    # the model script's normalization([mean...], [std...]): raw input values (pixels 0-255 on the
    # input stream) -> the model's domain, (raw - mean) / std; one value, or one per channel
    normalization: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0,), (255.0,))
    precision: dict = field(default_factory=dict)  # unscoped layer name -> precision mode
    optimization_level: int = 0
    clipping_mode: str = "minmax"
    clipping_values: tuple[float, float] = (0.0, 99.99)  # percentiles, for clipping_mode percentile
    finetune: FinetuneConfig = FinetuneConfig()

    def precision_of(self, layer: str) -> str:
        return self.precision.get(layer, "a8_w8")

    def bits_of(self, layer: str) -> tuple[int, int]:
        """(output activation bits, weight bits) of `layer`."""
        return arithmetic.PRECISION_MODES[self.precision_of(layer)]


def check(cfg: OptimizeConfig, layer_names: list[str]) -> None:
    """PipelineError naming the field unless the optimizer can run `cfg` on a network of these layers."""
    unknown = sorted(set(cfg.precision) - set(layer_names))
    if unknown:
        raise PipelineError(f"precision names unknown layer(s) {unknown}; the layers are {layer_names}")
    for name, mode in cfg.precision.items():
        if mode not in arithmetic.PRECISION_MODES:
            raise PipelineError(f"precision mode {mode!r} of layer {name} is not one of "
                                f"{', '.join(arithmetic.PRECISION_MODES)}")
    if cfg.optimization_level not in LEVELS:
        raise PipelineError(f"optimization_level must be one of {LEVELS}, got {cfg.optimization_level!r}")
    if cfg.clipping_mode not in CLIPPING_MODES:
        raise PipelineError(f"clipping_mode must be one of {', '.join(CLIPPING_MODES)}, got {cfg.clipping_mode!r}")
    lo, hi = cfg.clipping_values
    if not 0.0 <= lo < hi <= 100.0:
        raise PipelineError(f"clipping_values must be percentiles [low, high] with 0 <= low < high <= 100, "
                            f"got {[lo, hi]}")
    mean, std = cfg.normalization
    if not (mean and len(mean) == len(std) and all(math.isfinite(m) for m in mean)
            and all(math.isfinite(s) and s > 0 for s in std)):
        raise PipelineError(f"normalization must be [mean...], [std...] of one length, finite, std > 0, "
                            f"got {[list(mean), list(std)]}")
