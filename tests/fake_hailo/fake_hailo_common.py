"""Shared parts of the test stand-in for Hailo's SDK (tests only; never a backend).

`tests/fake_hailo` holds fake `hailo_sdk_client` (Dataflow Compiler) and `hailo_platform`
(HailoRT) packages with the documented API surface (the DFC's ClientRunner and HailoRT's
hailo_platform as public code calls them).  Tests put
this folder on sys.path (or PYTHONPATH for stage subprocesses); nothing in hailopipe imports it.

- `record(call, **details)`: every fake API call is appended to `CALLS` and, when
  $FAKE_HAILO_LOG names a file, written there as one JSON line (for subprocess runs).
- Versions and hardware come from the environment, read at import:
  $FAKE_HAILO_DFC_VERSION (default 3.27.0), $FAKE_HAILORT_VERSION (4.22.0),
  $FAKE_HAILO_DEVICES (comma-separated device ids; default none), $FAKE_HAILO_GPU=1 (a GPU: the
  fake DFC then picks it at import as the real one does, see hailo_sdk_client/__init__.py).
- `build_hef` / `read_hef`: the fake compiler's HEF is a real-format v1 HEF (magic 01 48 45 46,
  protobuf header and vstream edges that `hailopipe.formats.hailo_hef` reads) whose trailing section
  carries the emulator's compiled file (raw pixels in, its normalization layer inside), so the fake
  HailoRT can compute plausible outputs with hailopipe's own engine.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np

CALLS: list[dict] = []

DFC_VERSION = os.environ.get("FAKE_HAILO_DFC_VERSION", "3.27.0")
HAILORT_VERSION = os.environ.get("FAKE_HAILORT_VERSION", "4.22.0")
DEVICES = [d for d in os.environ.get("FAKE_HAILO_DEVICES", "").split(",") if d]
HAS_GPU = os.environ.get("FAKE_HAILO_GPU") == "1"

# Supported hw_arch per DFC major (reference: Hailo-8 family on DFC 3.x; DFC 5.x as Model Zoo 5.2's
# hw_utils/base_parsers list them, hailo10h the default).
ARCHS = {3: ("hailo8", "hailo8r", "hailo8l"),
         5: ("hailo10h", "hailo10p", "hailo12l", "hailo15h", "hailo15m", "hailo15l")}
# hw_arch -> ProtoHEFHwArch id written into the HEF header (hef.proto, HailoRT 5.2: a DFC hailo8 build
# says HAILO8P; HAILO10H = 5 is "Deprecated", so Hailo-10 builds are taken to say HAILO1XH = 103,
# which HailoRT maps to Hailo-15H and Hailo-10H devices; MARS = 108 is Hailo-12L's).  hailo10p's id
# is not public: HAILO1XH is a guess.
HEF_ARCH_IDS = {"hailo8": 1, "hailo8r": 2, "hailo8l": 3, "hailo15m": 4, "hailo15l": 6, "hailo10h": 103,
                "hailo10p": 103, "hailo15h": 103, "hailo12l": 108}


def gpu_visible() -> bool:
    """The fake DFC's GPU: $FAKE_HAILO_GPU=1, unless CUDA_VISIBLE_DEVICES hides it ("99" is what the
    real DFC sets at import when it finds no usable GPU; "-1" or "" is a user's choice of CPU)."""
    return HAS_GPU and os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() not in ("", "-1", "99")


class FakeLimitation(NotImplementedError):
    """Something the real SDK may accept but this stand-in cannot emulate."""


def major(version: str) -> int:
    return int(version.split(".")[0])


def summary(a) -> dict:
    """What a call received, in JSON-able form."""
    if isinstance(a, dict):
        return {"type": "dict", "keys": sorted(a), "values": [summary(v) for _, v in sorted(a.items())]}
    if not isinstance(a, np.ndarray):
        return {"type": type(a).__name__}
    out = {"type": "ndarray", "dtype": str(a.dtype), "shape": list(a.shape), "c_contiguous": bool(a.flags.c_contiguous)}
    if a.size and a.dtype.kind in "fiu":
        out.update(min=float(a.min()), max=float(a.max()))
    return out


def record(call: str, **details) -> None:
    entry = {"call": call, **details}
    CALLS.append(entry)
    path = os.environ.get("FAKE_HAILO_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True, default=str) + "\n")


def build_hef(qnet, hw_arch: str, sdk_version: str) -> bytes:
    """A v1 HEF for `qnet`: protobuf header + one single-context network group + a trailing
    section (declared as the CCW section) holding JSON metadata and the emulator's compiled file."""
    from hailopipe.formats import ehef as emulator_hef
    from hailopipe.formats.hailo_hef import MAGIC
    from hailopipe.formats.hef_schema import MESSAGES

    pb = MESSAGES["Hef"]()
    pb.header.hw_arch = HEF_ARCH_IDS[hw_arch]
    pb.header.sdk_version_str = sdk_version
    ng = pb.network_groups.add()
    ng.network_group_metadata.network_group_name = qnet.name
    ng.networks_names.append(qnet.name)
    out = qnet.output
    from hailopipe.quantization.qnetwork import QDense

    if not isinstance(out, QDense):
        raise FakeLimitation("the stand-in's HEF has a dense output layer; this network ends in a "
                             f"{type(out).__name__}")
    ng.sorted_outputs_order.append(f"{qnet.name}/{out.name}")
    ctx = ng.contexts.add()
    h, w, c = qnet.input_shape
    edge = ctx.metadata.edge_layers.add(direction=0)
    edge.layer_info.name = f"{qnet.name}/input_layer1"
    edge.layer_info.edge_layer_base.MergeFrom(MESSAGES["Base"](height=h, width=w, features=c, format=1, data_bytes=1))
    edge.layer_info.numeric_info.qp_scale, edge.layer_info.numeric_info.limvals_max = 1.0, 255.0
    edge = ctx.metadata.edge_layers.add(direction=1)
    edge.layer_info.name = f"{qnet.name}/{out.name}"
    edge.layer_info.edge_layer_base.MergeFrom(MESSAGES["Base"](height=1, width=1, features=out.kernel.shape[1], format=2,
                                                          data_bytes=1 if out.out_bits <= 8 else 2))
    qmin = -(1 << (out.out_bits - 1))  # the stand-in writes the HEF's numbers its own way
    num = edge.layer_info.numeric_info
    num.qp_scale, num.qp_zp = out.out_scale, out.out_zp - qmin
    num.limvals_min, num.limvals_max = out.limvals
    body = pb.SerializeToString()
    meta = json.dumps({"hw_arch": hw_arch}).encode()
    tail = struct.pack(">I", len(meta)) + meta + emulator_hef.compile_network(qnet, hw_arch)
    rest = body + tail
    return struct.pack(">4sIIIQI", MAGIC, 1, len(body), zlib.crc32(rest), len(tail), 0) + rest


def read_hef(source):
    """(hailo_hef info, metadata dict, emulator compiled bytes) of a HEF written by `build_hef`, from
    its path or its bytes."""
    from hailopipe.formats import hailo_hef

    info = hailo_hef.read(source)
    if isinstance(source, bytes):
        data = source
    else:
        with open(source, "rb") as f:
            data = f.read()
    version, proto_size = struct.unpack_from(">II", data, 4)
    if version != 1:
        raise FakeLimitation(f"{source if isinstance(source, str) else '<bytes>'}: the stand-in reads only the v1 HEFs "
                             "it writes")
    tail = data[28 + proto_size:]
    (n,) = struct.unpack_from(">I", tail)
    return info, json.loads(tail[4:4 + n]), tail[4 + n:]
