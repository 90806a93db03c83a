"""The stand-in's strict model-script (.alls) parser: every command and argument name must be one
documented in reference section 1 ("Model script"); unknown ones, bad values and unknown layer
names raise ModelScriptError, which is what a misspelled script should get from the real DFC.

Syntax: one command per line, `[name = ]command(arg, ..., key=value, ...)`; layer arguments are
a name (`fc1` or scoped `net/fc1`), a list `[a, b]` or a glob set `{fc*}`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from hailo_sdk_client.exposed_definitions import HailoSDKError

PRECISION_MODES = ("a8_w8", "a8_w4", "a16_w16", "a16_w8", "a8_w8_a16", "a16_w8_a16")
POLICY = ("enabled", "disabled")


class ModelScriptError(HailoSDKError):
    pass


def _int(lo, hi=None):
    return lambda v: re.fullmatch(r"-?\d+", v) is not None and int(v) >= lo and (hi is None or int(v) <= hi)


def _one_of(*values):
    return lambda v: v in values


def _number(v: str) -> bool:
    return re.fullmatch(r"-?\d+(\.\d*)?([eE]-?\d+)?", v) is not None


def _any(v: str) -> bool:
    return True


def _number_list(v: str) -> bool:
    return v.startswith("[") and v.endswith("]") and all(_number(x.strip()) for x in v[1:-1].split(",") if x.strip())


POST_KW = {"policy": _one_of(*POLICY), "learning_rate": _number, "epochs": _int(1), "dataset_size": _int(1),
           "batch_size": _int(1), "loss_layer_names": _any, "loss_types": _any, "loss_factors": _any}
PRE_KW = {"policy": _one_of(*POLICY), "layers": _any, "mode": _any, "clipping_values": _number_list}
# command -> (min positional, max positional, keywords {name: check}, sub-commands {name: keywords},
#             indices of positional layer arguments, may assign a layer name)
SPECS = {
    "normalization": (2, 3, {}, None, (2,), True),
    "input_conversion": (1, 2, {}, None, (), True),
    "resize": (1, 2, {}, None, (), True),
    "model_optimization_flavor": (0, 0, {"optimization_level": _int(0, 4), "compression_level": _int(0, 5),
                                         "batch_size": _int(1)}, None, (), False),
    "model_optimization_config": (1, 1, {}, {
        "calibration": {"batch_size": _int(1), "calibset_size": _int(1)},
        "compression_params": {"auto_4bit_weights_ratio": _number},
        "globals": {"multiproc_policy": _one_of(*POLICY)},
        "checker_cfg": {"policy": _one_of(*POLICY)}}, (), False),
    "quantization_param": (1, 1, {"precision_mode": _one_of(*PRECISION_MODES),
                                  "bias_mode": _one_of("double_scale_initialization", "single_scale_decomposition"),
                                  "force_range_in": _number_list, "force_range_index": _int(0)}, None, (0,), False),
    "pre_quantization_optimization": (1, 1, {}, {a: PRE_KW for a in (
        "equalization", "activation_clipping", "weights_clipping", "matmul_equalization", "ew_add_fusing",
        "layer_norm_decomposition")}, (), False),
    "post_quantization_optimization": (1, 1, {}, {"finetune": POST_KW, "bias_correction": POST_KW}, (), False),
    "change_output_activation": (1, 2, {}, None, (), False),
    "logits_layer": (4, 4, {}, None, (0,), True),
    "nms_postprocess": (0, 1, {"meta_arch": _any, "engine": _one_of("cpu", "nn_core")}, None, (), False),
    "performance_param": (0, 0, {"compiler_optimization_level": _one_of("max", "0", "1", "2")}, None, (), False),
    # The public sources show these two without their argument names: accepted unchecked.
    "allocator_param": (0, 9, None, None, (), False),
    "resources_param": (0, 9, None, None, (), False),
}


@dataclass
class Command:
    line: int
    assign: str | None
    name: str
    args: list[str]
    kwargs: dict[str, str]


def split_args(text: str, where: str) -> list[str]:
    parts, cur, depth, quote = [], "", 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if depth or quote:
        raise ModelScriptError(f"{where}: unbalanced brackets or quotes")
    if cur.strip():
        parts.append(cur.strip())
    if any(not p for p in parts):
        raise ModelScriptError(f"{where}: empty argument")
    return parts


def layer_names(spec: str) -> list[str]:
    if spec[0] in "[{":
        return [s.strip() for s in spec[1:-1].split(",") if s.strip()]
    return [spec]


def _check_layers(spec: str, layers: set[str], where: str) -> None:
    for name in layer_names(spec):
        if not (fnmatch.filter(layers, name) if spec.startswith("{") else name in layers):
            raise ModelScriptError(f"{where}: unknown layer {name!r} (layers: {', '.join(sorted(layers))})")


def parse(text: str, layers: set[str]) -> list[Command]:
    """Parse and check a model script; `layers` holds the HN layer names, scoped and unscoped."""
    commands = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"model script line {n} {raw.strip()!r}"
        m = re.fullmatch(r"\s*(?:([A-Za-z_]\w*)\s*=\s*)?([A-Za-z_]\w*)\((.*)\)\s*", raw)
        if not m:
            raise ModelScriptError(f"{where}: not a command")
        assign, name, body = m.groups()
        if name not in SPECS:
            raise ModelScriptError(f"{where}: unknown command {name!r}")
        lo, hi, keywords, subs, layer_args, may_assign = SPECS[name]
        if assign and not may_assign:
            raise ModelScriptError(f"{where}: {name} does not create a layer to assign")
        args, kwargs = [], {}
        for part in split_args(body, where):
            key = re.match(r"([A-Za-z_]\w*)\s*=(.*)", part)
            if key and not part.startswith(("[", "{", '"', "'")):
                kwargs[key.group(1)] = key.group(2).strip()
            elif kwargs:
                raise ModelScriptError(f"{where}: positional argument after keyword arguments")
            else:
                args.append(part)
        if not lo <= len(args) <= hi:
            raise ModelScriptError(f"{where}: {name} takes {lo}-{hi} positional arguments, got {len(args)}")
        if subs is not None:
            if args[0] not in subs:
                raise ModelScriptError(f"{where}: unknown {name} item {args[0]!r} (known: {', '.join(subs)})")
            keywords = subs[args[0]]
        for key, value in kwargs.items():
            if keywords is None:
                continue
            if key not in keywords:
                raise ModelScriptError(f"{where}: unknown argument {key!r} of {name} (known: {', '.join(keywords)})")
            if not keywords[key](value):
                raise ModelScriptError(f"{where}: bad value {value!r} for {key}")
        for i in layer_args:
            if i < len(args):
                _check_layers(args[i], layers, where)
        for key in ("layers", "loss_layer_names"):
            if key in kwargs:
                _check_layers(kwargs[key], layers, where)
        if name == "normalization" and not (_number_list(args[0]) and _number_list(args[1])):
            raise ModelScriptError(f"{where}: normalization takes [means], [stds]")
        if name == "logits_layer" and (args[1] not in ("softmax", "argmax") or args[3] not in ("cpu", "nn_core")):
            raise ModelScriptError(f"{where}: logits_layer(<layer>, softmax|argmax, <axis>, cpu|nn_core)")
        commands.append(Command(n, assign, name, args, kwargs))
    return commands


def numbers(spec: str) -> list[float]:
    return [float(x) for x in spec.strip("[]").split(",") if x.strip()]
