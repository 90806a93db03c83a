"""HAR (Hailo ARchive) files: a tar of `<net>.metadata.json`, `<net>.hn`, `<net>.npz` [, `<net>.q.npz`].

Layout as in Hailo's SDK: the metadata's `state` is `hailo_model` after parsing and
`quantized_model` after optimization and `compiled_model` after compilation (then it also holds
the compiled file as `<net>.hef`), `hn` names the HN member and `sdk_version` is numeric, as real
archives have them (Netron's Hailo reader needs both); the HN is the graph JSON and the .npz the float params (see
`hn`), the .q.npz the quantized ones (see `qnpz`).  This emulator also records
`emulator` (its name and version), `emulated: true`, the target `hw_arch` and, after optimization,
the equivalent Hailo model script.

Writing is byte-stable (fixed member order, mtime 0, uid/gid 0, no user names) and atomic.
Reading is strict and safe on files this project did not write: only regular members with plain
names, bounded sizes, no path components, each member once; anything else is a PipelineError.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field

from hailopipe import EMULATOR, network
from hailopipe.errors import PipelineError
from hailopipe.fileio import json_bytes, load_npz, npz_bytes, open_regular, write_bytes
from hailopipe.formats import hn, qnpz
from hailopipe.quantization.qnetwork import QNetwork

STATES = ("hailo_model", "fp_optimized_model", "quantized_model", "compiled_model")
# The Dataflow Compiler whose archive layout this follows (that of the real Hailo-8 HEF the tests
# read), numeric as real archives and Netron's Hailo reader have it; the emulator names itself in
# its own key.
SDK_VERSION = "3.27.0"
MAX_MEMBER_BYTES = 1 << 30
MAX_MEMBERS = 16


@dataclass
class Har:
    state: str
    net: network.Network
    qnet: QNetwork | None = None
    metadata: dict = field(default_factory=dict)
    hef: bytes | None = None  # a compiled HAR also carries the compiled file, as `<net>.hef`


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def har_bytes(har: Har) -> bytes:
    name = har.net.name
    meta = dict(har.metadata)
    meta.update({"state": har.state, "hn": f"{name}.hn", "sdk_version": SDK_VERSION, "emulator": EMULATOR,
                 "emulated": True, "net_name": name})
    members = [(f"{name}.metadata.json", json_bytes(meta)),
               (f"{name}.hn", json_bytes(hn.to_hn(har.net))),
               (f"{name}.npz", npz_bytes(hn.weights(har.net)))]
    if har.qnet is not None:
        members.append((f"{name}.q.npz", npz_bytes(qnpz.to_arrays(har.qnet))))
    if har.hef is not None:
        members.append((f"{name}.hef", bytes(har.hef)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member_name, data in members:
            _add(tar, member_name, data)
    return buf.getvalue()


def save(har: Har, path: str | os.PathLike) -> None:
    if har.state not in STATES:
        raise ValueError(f"unknown HAR state {har.state!r}")
    if (har.qnet is not None) != (har.state in ("quantized_model", "compiled_model")):
        raise ValueError(f"state {har.state} and quantized params disagree")
    if har.qnet is not None and (har.net.normalization is None) != (har.qnet.normalization is None):
        raise ValueError("the HN and the quantized params disagree on the normalization layer")
    write_bytes(path, har_bytes(har))


def read_members(path: str | os.PathLike) -> dict[str, bytes]:
    """The members of a HAR as {name: bytes}, refusing anything unsafe or unexpected."""
    members: dict[str, bytes] = {}
    try:
        with open_regular(path, "HAR file") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            size = os.fstat(fh.fileno()).st_size
            for info in tar:
                if len(members) >= MAX_MEMBERS:
                    raise PipelineError(f"{path}: more than {MAX_MEMBERS} members; not a HAR")
                if not info.isreg():
                    raise PipelineError(f"{path}: member {info.name!r} is not a regular file (links are refused)")
                if "/" in info.name or "\\" in info.name or info.name in ("", ".", "..") or info.name.startswith("."):
                    raise PipelineError(f"{path}: member name {info.name!r} is not a plain file name")
                if info.size > MAX_MEMBER_BYTES:
                    raise PipelineError(f"{path}: member {info.name!r} declares {info.size} bytes, too large")
                if info.offset_data + info.size > size:  # checked before reading allocates `size` bytes
                    raise PipelineError(f"{path}: member {info.name!r} is truncated")
                if info.name in members:
                    raise PipelineError(f"{path}: member {info.name!r} appears twice")
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise PipelineError(f"{path}: member {info.name!r} is truncated")
                members[info.name] = data
    except (tarfile.TarError, EOFError, OSError, UnicodeError) as exc:
        raise PipelineError(f"{path}: not a readable HAR (tar) file ({exc})") from None
    if not members:
        raise PipelineError(f"{path}: empty archive; not a HAR")
    return members


def load(path: str | os.PathLike, expect_state: str | None = None) -> Har:
    """Read and check a HAR; with `expect_state`, refuse an archive in another state."""
    members = read_members(path)
    metas = [n for n in members if n.endswith(".metadata.json")]
    if len(metas) != 1:
        raise PipelineError(f"{path}: expected one *.metadata.json member, found {len(metas)}")
    name = metas[0][: -len(".metadata.json")]
    try:
        meta = json.loads(members[metas[0]])
        graph = json.loads(members[f"{name}.hn"]) if f"{name}.hn" in members else None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PipelineError(f"{path}: metadata or HN is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("state") not in STATES:
        raise PipelineError(f"{path}: metadata has no known 'state' (one of {', '.join(STATES)})")
    state = meta["state"]
    if expect_state and state != expect_state:
        raise PipelineError(f"{path}: HAR is in state {state!r}, expected {expect_state!r}")
    if graph is None or f"{name}.npz" not in members:
        raise PipelineError(f"{path}: members {name}.hn and {name}.npz are required")
    params = load_npz(members[f"{name}.npz"], f"{path}:{name}.npz")
    net = hn.from_hn(graph, params, f"{path}:{name}.hn")
    if net.name != name:
        raise PipelineError(f"{path}: HN network name {net.name!r} differs from the archive's {name!r}")
    qnet = None
    if state in ("quantized_model", "compiled_model"):
        if f"{name}.q.npz" not in members:
            raise PipelineError(f"{path}: state {state} but {name}.q.npz is missing")
        qarrays = load_npz(members[f"{name}.q.npz"], f"{path}:{name}.q.npz")
        qnet = qnpz.from_arrays(qarrays, net, f"{path}:{name}.q.npz")
    return Har(state, net, qnet, meta, members.get(f"{name}.hef"))
