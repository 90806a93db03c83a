"""The Hailo model script (.alls) that asks the SDK's optimizer for what an `OptimizeConfig` does here.

Written into the quantized HAR by the emulator, and loaded into the Dataflow Compiler by the hailo
backend (`runner.load_model_script`), in the SDK's command spelling.
"""

from __future__ import annotations

from hailopipe import network
from hailopipe.quantization.config import OptimizeConfig


def render(net: network.Network, cfg: OptimizeConfig, ranges=None) -> str:
    """The Hailo model script (.alls) that asks the DFC for the same quantization.

    With `ranges` (per layer of `net.layers` [lo, hi], e.g. from `calibration.ranges`; a pooling
    layer's is ignored, it keeps its input's qparams), an `mse` clipping mode is
    written as the SDK's manual clipping of each layer to the ranges found; without, as a comment,
    since the SDK's activation clipping has no MSE mode.
    """
    mean, std = cfg.normalization
    # the layers with an output range of their own (a pooling layer keeps its input's)
    scoped = [f"{net.name}/{layer.name}" for layer in net.layers if not isinstance(layer, network.Pool)]
    level, ft = cfg.optimization_level, cfg.finetune
    lines = [f"normalization1 = normalization([{', '.join(f'{m:g}' for m in mean)}], "
             f"[{', '.join(f'{v:g}' for v in std)}])",
             f"model_optimization_flavor(optimization_level={level}, compression_level=0)",
             f"model_optimization_config(calibration, batch_size=8, calibset_size={cfg.calib_size})"]
    for name, mode in sorted(cfg.precision.items()):
        lines.append(f"quantization_param({net.name}/{name}, precision_mode={mode})")
    lines.append("pre_quantization_optimization(equalization, policy=disabled)")
    if cfg.clipping_mode == "percentile":
        lines.append(f"pre_quantization_optimization(activation_clipping, layers=[{', '.join(scoped)}], "
                     f"mode=percentile, clipping_values=[{cfg.clipping_values[0]:g}, {cfg.clipping_values[1]:g}])")
    elif cfg.clipping_mode == "mse" and ranges is not None:
        with_range = [(f"{net.name}/{layer.name}", r) for layer, r in zip(net.layers, ranges)
                      if not isinstance(layer, network.Pool)]
        for name, (r_lo, r_hi) in with_range:
            lines.append(f"pre_quantization_optimization(activation_clipping, layers=[{name}], mode=manual, "
                         f"clipping_values=[{r_lo:.6g}, {r_hi:.6g}])")
    elif cfg.clipping_mode == "mse":
        lines.append("# activation_clipping: MSE-optimal ranges (the SDK has no such mode; pass the ranges "
                     "to write them as mode=manual)")
    # as in every Model Zoo script: bias correction and fine-tuning are never enabled together
    lines.append(f"post_quantization_optimization(bias_correction, policy={'enabled' if level == 1 else 'disabled'})")
    if level >= 2:
        lines.append(f"post_quantization_optimization(finetune, policy=enabled, learning_rate={ft.learning_rate:g}, "
                     f"epochs={ft.epochs}, batch_size={ft.batch_size}, dataset_size={cfg.calib_size}, "
                     "loss_types=[l2], loss_layer_names=[" + scoped[-1] + "])")
    else:
        lines.append("post_quantization_optimization(finetune, policy=disabled)")
    lines.append(f"# weights: {'per_channel' if cfg.per_channel else 'per_tensor'} symmetric "
                 "(no model-script command selects this in the SDK)")
    return "\n".join(lines) + "\n"
