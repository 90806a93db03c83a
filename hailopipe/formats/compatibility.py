"""Will a compiled file run on a given Hailo device, and with which HailoRT: HailoRT's checks, release by release.

    from hailopipe.formats import compatibility
    verdict = compatibility.check("model.hef", "hailo8l")                 # all releases known here
    verdict = compatibility.check("model.hef", "hailo8l", hailort="4.20")  # one release
    verdict.compatible        # True, False, or None when no rule is known (a hailo10p device)
    print(verdict.text())     # what `hailopipe check` prints; verdict.to_json() is the same as JSON
    outcome = compatibility.evaluate(compatibility.facts(info, compiled), "hailo8l", (4, 20, 0))  # .ok, .status

`hailopipe check` and the emulated `runtime.VDevice` both use this module.  A real HEF goes through
every check below.  An emulated file (`ehef`) cannot be loaded by HailoRT at all: its magic is not
HEADER_MAGIC, so hef.cpp refuses it with "HEF magic does not match".  Only the device checks (1, 2, 4, 5)
apply to it, against the HEF arch the DFC would record for its hw_arch (`DFC_ARCH`; the real Hailo-8
MNIST HEF, compiled for hailo8, proves hailo8 -> HAILO8P; the other names are assumed by analogy).

The rules come from hailo-ai/hailort at the release tags v4.15.0 to v5.2.0 (branch hailo8 is 4.x,
tip v4.23.0 = 08f088d; master is 5.x, tip v5.2.0 = 41a720b); paths below are under
hailort/libhailort/.  They are applied in the order a program meets them:
  1. VDevice: HailoRT 5.x refuses Hailo-8 family devices with HAILO_NOT_SUPPORTED ("Hailo8 devices
     are only supported in versions 4.x.x and earlier", vdma/pcie/pcie_device.cpp, v5.0.0+).
  2. The device must exist in the release's hailo_device_architecture_t (include/hailo/hailort.h).
  3. Hef(): the header version must be one the release reads (hef_internal.hpp HEADER_VERSION_*,
     hef.cpp parse_hef_file).  Every required extension (ProtoHEFHef.extensions, not
     optional_extensions) must be in SUPPORTED_EXTENSIONS (hef.cpp validate_hef_extensions), and
     from 4.21 PERIPH_CALCULATION_IN_HAILORT must be among them.
  4. configure(): the device arch must accept the HEF arch (device_common/device_internal.cpp
     DeviceBase::is_hef_compatible up to 5.0.1, hef_arch_to_device_compatible_archs from 5.1.0).
  5. configure(), HailoRT 4.22+: only Hailo-8 family HEFs (verify_legacy_hef_only).
  6. configure(), HailoRT 5.x: a HEF with STRICT_RUNTIME_VERSIONING needs DFC major.minor equal to
     HailoRT's (hef.cpp validate_hef_version; HAILO_IGNORE_STRICT_VERSION=1 skips it).
The status codes changed in 4.21.  Before that, a failed check returned HAILO_INVALID_HEF(26).
From 4.21 an unreadable or unsupported file returns HAILO_HEF_NOT_SUPPORTED(92), and a file meant
for another device HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93) (hailort.h HAILO_STATUS__X).

The rules leave some things open, and the output says so rather than guessing:
  - HailoRT releases without a tag in hailort's public repository (4.16 and everything before 4.15)
    are refused as unknown.
  - hailo10p: the Model Zoo compiles for it, but no HailoRT release names such a device.
  - HailoRT 4.x never compares the compiler version with its own.  The pairing of each DFC release
    with a HailoRT release (`RELEASED_WITH`) is Hailo's, from the Model Zoo's release notes.
  - Content a release cannot execute (new actions, ops) is not covered by these checks.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from hailopipe.errors import PipelineError

Release = tuple  # (major, minor, patch)
RELEASES: list[Release] = [(4, 15, 0), (4, 17, 0), (4, 17, 1), (4, 18, 0), (4, 19, 0), (4, 20, 0), (4, 20, 1),
                           (4, 21, 0), (4, 22, 0), (4, 23, 0), (5, 0, 0), (5, 0, 1), (5, 1, 0), (5, 1, 1), (5, 2, 0)]
STATUS = {"HAILO_INVALID_HEF": 26, "HAILO_NOT_SUPPORTED": 79, "HAILO_HEF_NOT_SUPPORTED": 92,
          "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE": 93}

# --hw-arch / device name -> (hailo_device_architecture_t, NN-core clock in MHz where the name says it).
# A Hailo-8R board is taken to be a HAILO8 device at HAILO8R_CLOCK_RATE (200 MHz vs 400,
# device_common/control_protocol.hpp): hef_arch_to_device_arch maps a HAILO8R HEF to HAILO8, and
# check_clock_rate_for_hailo8 expects that clock for it.
DEVICES = {"hailo8": ("HAILO8", 400), "hailo8r": ("HAILO8", 200), "hailo8l": ("HAILO8L", None),
           "hailo15h": ("HAILO15H", None), "hailo15m": ("HAILO15M", None), "hailo15l": ("HAILO15L", None),
           "hailo10h": ("HAILO10H", None), "hailo10p": (None, None), "hailo12l": ("HAILO12L", None)}
HAILO8_FAMILY = ("HAILO8", "HAILO8L")
DEVICE_SINCE = {"HAILO8": (4, 15, 0), "HAILO8L": (4, 15, 0), "HAILO15H": (4, 15, 0), "HAILO15L": (4, 15, 0),
                "HAILO15M": (4, 17, 0), "HAILO10H": (4, 18, 0), "HAILO12L": (4, 21, 0)}  # 15L was PLUTO, 12L MARS
# What the DFC records as ProtoHEFHwArch for a hw_arch (hailo8 -> HAILO8P seen in a real HEF; rest assumed).
DFC_ARCH = {"hailo8": "HAILO8P", "hailo8r": "HAILO8R", "hailo8l": "HAILO8L", "hailo15h": "HAILO15H",
            "hailo15m": "HAILO15M", "hailo15l": "HAILO15L", "hailo10h": "HAILO15H", "hailo12l": "MARS"}
HEF_TO_DEVICE = {"SAGE_A0": "HAILO8_A0", "HAILO8": "HAILO8", "HAILO8P": "HAILO8", "HAILO8R": "HAILO8",
                 "SAGE_B0": "HAILO8", "PAPRIKA_B0": "HAILO8", "HAILO8L": "HAILO8L", "HAILO15H": "HAILO15H",
                 "GINGER": "HAILO15H", "LAVENDER": "HAILO15H", "PLUTO": "HAILO15L", "HAILO15L": "HAILO15L",
                 "HAILO15M": "HAILO15M", "HAILO10H": "HAILO10H", "MARS": "HAILO12L"}  # hef_arch_to_device_arch

# DeviceBase::is_hef_compatible (4.15.0-5.0.1): device -> [(from release, HEF archs it accepts)].
ACCEPTS = {"HAILO8": [((4, 15, 0), {"HAILO8P", "HAILO8R", "HAILO8L"})],
           "HAILO8L": [((4, 15, 0), {"HAILO8L"})],
           "HAILO15H": [((4, 15, 0), {"GINGER", "LAVENDER", "HAILO15H"}),
                        ((4, 17, 0), {"GINGER", "LAVENDER", "HAILO15H", "HAILO15M"}),
                        ((4, 18, 0), {"GINGER", "LAVENDER", "HAILO15H", "HAILO15M", "HAILO10H"})],
           "HAILO10H": [((4, 18, 0), {"GINGER", "LAVENDER", "HAILO15H", "HAILO15M", "HAILO10H"})],
           "HAILO15M": [((4, 17, 0), {"HAILO15M"})],
           "HAILO15L": [((4, 15, 0), {"PLUTO"}), ((4, 20, 0), {"HAILO15L", "PLUTO"})],
           "HAILO12L": [((5, 0, 0), {"MARS"})]}
# hef_arch_to_device_compatible_archs (5.1.0+): HEF arch -> devices (HAILO15H is ProtoHEFHwArch 103,
# named HAILO1XH there; HAILO10H = 5 is deprecated and runs nowhere).
COMPATIBLE_ARCHS = {"SAGE_A0": ["HAILO8_A0"], "HAILO8": ["HAILO8"], "HAILO8P": ["HAILO8"], "HAILO8R": ["HAILO8"],
                    "SAGE_B0": ["HAILO8"], "PAPRIKA_B0": ["HAILO8"], "HAILO8L": ["HAILO8L", "HAILO8"],
                    "HAILO15H": ["HAILO15H", "HAILO10H"], "GINGER": ["HAILO15H", "HAILO10H"],
                    "LAVENDER": ["HAILO15H", "HAILO10H"], "PLUTO": ["HAILO15L"], "HAILO15L": ["HAILO15L"],
                    "HAILO15M": ["HAILO15M", "HAILO15H", "HAILO10H"], "MARS": ["HAILO12L"]}

# ProtoHEFExtensionType -> (name, first 4.x release, first 5.x release) in SUPPORTED_EXTENSIONS
# (hef_internal.hpp).  "4.15.0" means "already in the oldest release known here"; the source comments
# date PERIPH_CALCULATION_IN_HAILORT and most net-flow extensions to 4.14, HW_PADDING and YOLOV8 to 4.16.
# TEST_ONE (7) and MULTI_NETWORK_VARIABLE_BATCH_SIZE (8, read as optional only) are in no release.
_OLD = ["ABBALE", "POSTED_WRITES", "DDR", "PADDED_DDR_BUFFERS", "IS_MULTI_CONTEXTS", "COMPRESSED_PARAMS",
        "TRANSPOSE_COMPONENT", None, None, "IS_NMS_MULTI_CONTEXT", "OFFLOAD_ARGMAX", None, "KO_RUN_ASAP",
        "HAILO_NET_FLOW", "HAILO_NET_FLOW_YOLOV5_NMS", "HAILO_NET_FLOW_YOLOX_NMS", "HAILO_NET_FLOW_SSD_NMS",
        "HAILO_NET_FLOW_IOU_NMS", "WRITE_DATA_BY_TYPE", "NMS_OUTPUT_BURST", "DUAL_DIRECTION_STREAM_INDEX",
        "HAILO_NET_FLOW_ARGMAX", "HAILO_NET_FLOW_SOFTMAX", "ALIGNED_FORMAT_TYPE", "HAILO_NET_FLOW_YOLOV5_SEG_NMS",
        "OUTPUT_SCALE_PER_FEATURE", "PERIPH_CALCULATION_IN_HAILORT"]
EXTENSIONS = {i: (name, (4, 15, 0), (5, 0, 0)) for i, name in enumerate(_OLD) if name}
EXTENSIONS.update({
    7: ("TEST_ONE", None, None), 8: ("MULTI_NETWORK_VARIABLE_BATCH_SIZE", None, None),
    11: ("HW_PADDING", (4, 17, 0), (5, 0, 0)), 27: ("HAILO_NET_FLOW_YOLOV8_NMS", (4, 17, 0), (5, 0, 0)),
    28: ("BATCH_REGISTER_CONFIG", (4, 17, 0), (5, 0, 0)), 29: ("HAILO_NET_FLOW_BBOX_DECODING", (4, 17, 0), (5, 0, 0)),
    30: ("CCW_PTR_SQUEEZE", (4, 21, 0), (5, 0, 0)), 31: ("EXTERNAL_RESOURCES", (4, 21, 0), (5, 0, 0)),
    32: ("SHARED_CONFIG", (4, 21, 0), (5, 0, 0)), 33: ("CSM_CRC", None, (5, 0, 1)),
    34: ("ENABLE_CONFIG_CHANNELS", None, (5, 0, 1)), 35: ("STRICT_RUNTIME_VERSIONING", None, (5, 0, 0))})
PERIPH, STRICT = 26, 35
# DFC major.minor -> the HailoRT it was released with (Hailo Model Zoo tags v2.6-v2.17 and v5.0.0-v5.2.0,
# README badges and docs/CHANGELOG.rst): DFC 3.N goes with HailoRT 4.(N-10), DFC 5.N with 5.N.
RELEASED_WITH = {**{(3, n): (4, n - 10) for n in range(22, 34)}, (5, 0): (5, 0), (5, 1): (5, 1), (5, 2): (5, 2)}


def _v(r) -> str:
    return ".".join(map(str, r))


def parse_release(text: str, what: str = "--hailort") -> Release:
    """'4.20' or '4.20.1' -> a known release (X.Y means X.Y.0, or the first X.Y.Z); PipelineError else."""
    parts = text.strip().split(".")
    known = ", ".join(map(_v, RELEASES))
    if not (2 <= len(parts) <= 3 and all(p.isdigit() for p in parts)):
        raise PipelineError(f"{what} {text!r}: expected a version X.Y or X.Y.Z, e.g. 4.20 (known: {known})")
    nums = tuple(int(p) for p in parts)
    match = [r for r in RELEASES if r[:len(nums)] == nums]
    if not match:
        raise PipelineError(f"{what} {text}: not a HailoRT release this check knows (known: {known}; "
                            "the rules come from the release tags of hailort's public repository)")
    return match[0]


def default_release(device: str) -> Release:
    """The newest release that serves `device`: 4.x for the Hailo-8 family, 5.x for the others."""
    arch = DEVICES[device][0]
    return max(r for r in RELEASES if (r[0] == 4) == (arch in HAILO8_FAMILY))


@dataclass
class Facts:
    """What the checks read from a compiled file."""
    path: str
    hef_arch: str
    emulated: bool
    dfc_arch: str = ""       # an emulated file's hw_arch
    header_version: int = 0
    format_version: int = 0
    sdk_version: str = ""
    extensions: list = field(default_factory=list)  # (type_index, name as stored in the HEF)


def facts(info, compiled=None) -> Facts:
    """Facts from `parse_hef.read`'s (HefInfo, CompiledModel or None)."""
    if compiled is not None:
        dfc = str(compiled.meta.get("hw_arch", "")).lower()
        return Facts(info.path, DFC_ARCH.get(dfc, f"UNKNOWN({dfc})"), True, dfc)
    return Facts(info.path, info.hw_arch, False, "", info.header_version, info.format_version,
                 info.sdk_version, list(info.extensions))


@dataclass
class Outcome:
    ok: bool | None
    message: str = ""
    status: str = ""          # HailoRT's status name, "" when HailoRT has none for it
    warnings: list = field(default_factory=list)

    @property
    def status_text(self) -> str:
        return f"{self.status}({STATUS[self.status]})" if self.status else ""


def _arch_str(arch: str, r: Release) -> str:
    return "MARS" if arch == "HAILO12L" and r < (5, 2, 0) else arch  # get_device_arch_str before 5.2


def _accepted(device_arch: str, hef_arch: str, r: Release) -> bool:
    if r >= (5, 1, 0):
        return device_arch in COMPATIBLE_ARCHS.get(hef_arch, [])
    rules = [archs for since, archs in ACCEPTS.get(device_arch, []) if since <= r]
    return bool(rules) and hef_arch in rules[-1]


def _open(f: Facts, r: Release) -> Outcome | None:
    """Hef(): header version and extensions (check 3); None if the release opens the file."""
    new = r >= (4, 21, 0)
    headers = 3 if new else 2 if r >= (4, 20, 0) else 1 if r >= (4, 17, 0) else 0
    if f.header_version > headers:
        text = f"Unsupported hef version {f.header_version}" if r >= (4, 18, 0) else "HEF version does not match"
        return Outcome(False, text, "HAILO_HEF_NOT_SUPPORTED" if new else "HAILO_INVALID_HEF")
    since = 2 if r[0] == 5 else 1
    bad = [name for i, name in f.extensions
           if i not in EXTENSIONS or EXTENSIONS[i][since] is None or EXTENSIONS[i][since] > r]
    if bad:
        return Outcome(False, "Failed opening non-compatible HEF with the following unsupported extensions: "
                       + ", ".join(bad), "HAILO_HEF_NOT_SUPPORTED" if new else "HAILO_INVALID_HEF")
    if new and not (f.format_version > 0 and any(i == PERIPH for i, _ in f.extensions)):
        return Outcome(False, "Hef has periph_calculation_in_hailort feature disabled - this HEF is outdated "
                       "and no longer supported. Please update HEF", "HAILO_HEF_NOT_SUPPORTED")
    return None


def device_refusal(device: str, r: Release) -> Outcome | None:
    """Checks 1-2, made when the (V)Device opens, before any HEF: None if release `r` serves `device`."""
    arch = DEVICES[device][0]
    if arch is None:
        return Outcome(None, f"HailoRT names no {device} device (hailo_device_architecture_t, 4.23.0 and 5.2.0): "
                       "no rule says which HEFs it runs")
    if r[0] == 5 and arch in HAILO8_FAMILY:
        return Outcome(False, "Hailo8 devices are only supported in versions 4.x.x and earlier", "HAILO_NOT_SUPPORTED")
    if r < DEVICE_SINCE[arch]:
        return Outcome(False, f"HailoRT {_v(r)} has no {arch} device architecture (hailo_device_architecture_t)")
    return None


def evaluate(f: Facts, device: str, r: Release) -> Outcome:
    """Whether HailoRT release `r` runs file `f` on `device`, and the first refusal HailoRT reports if not."""
    arch, clock = DEVICES[device]
    refused = device_refusal(device, r)
    if refused:
        return refused
    if not f.emulated:
        refused = _open(f, r)
        if refused:
            return refused
    if not _accepted(arch, f.hef_arch, r):
        if r >= (5, 1, 0):
            archs = " ".join(COMPATIBLE_ARCHS.get(f.hef_arch, ["UNKNOWN ARCHITECTURE"]))
            text = f"Device arch: {arch}, HEF compatible for: {archs}"
        else:
            text = f"Device arch: {_arch_str(arch, r)}, HEF arch: " \
                   f"{_arch_str(HEF_TO_DEVICE.get(f.hef_arch, 'UNKNOWN ARCHITECTURE'), r)}"
        status = "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE" if r >= (4, 21, 0) else "HAILO_INVALID_HEF"
        return Outcome(False, "HEF format is not compatible with device. " + text, status)
    if r >= (4, 22, 0) and r[0] == 4 and HEF_TO_DEVICE.get(f.hef_arch) not in HAILO8_FAMILY:
        return Outcome(False, f"HEF arch {_arch_str(HEF_TO_DEVICE[f.hef_arch], r)} is not valid. Please use "
                       "HailoRT v5.x instead.", "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE")
    sdk = tuple(int(p) for p in f.sdk_version.split(".")[:2] if p.isdigit())
    if r[0] == 5 and any(i == STRICT for i, _ in f.extensions) and sdk != r[:2] \
            and os.environ.get("HAILO_IGNORE_STRICT_VERSION") != "1":
        return Outcome(False, f"DFC version from which this HEF was created ({f.sdk_version}) is different from "
                       f"library version ({_v(r)}), which is not allowed for this model.", "HAILO_INVALID_HEF")
    warnings = []  # DeviceBase::check_hef_is_compatible's warnings
    if f.hef_arch == "HAILO8L" and arch == "HAILO8":
        warnings.append("HEF was compiled for Hailo8L device, while the device itself is Hailo8. "
                        "This will result in lower performance.")
    if f.hef_arch == "HAILO15M" and arch == "HAILO15H":
        warnings.append("HEF was compiled for Hailo15M device, while the device itself is Hailo15H. "
                        "This will result in lower performance.")
    expected = 200 if f.hef_arch == "HAILO8R" else 400  # check_clock_rate_for_hailo8
    if clock and clock != expected:
        warnings.append(f"HEF was compiled assuming clock rate of {expected} MHz, while the device clock rate is "
                        f"{clock} MHz. FPS calculations might not be accurate.")
    return Outcome(True, warnings=warnings)


# --- the verdict over releases ---------------------------------------------------------------

def _ranges(releases: list[Release]) -> str:
    """Known releases as runs of consecutive ones: '4.15.0-4.23.0, 5.1.0-5.2.0'."""
    runs, idx = [], [RELEASES.index(r) for r in releases]
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(_v(RELEASES[a]) if a == b else f"{_v(RELEASES[a])}-{_v(RELEASES[b])}" for a, b in runs) or "none"


def _grouped(outcomes: dict) -> list[tuple[list[Release], Outcome]]:
    """Consecutive releases with the same refusal (or the same warnings), in release order."""
    groups: list[tuple[list[Release], Outcome]] = []
    for r, o in outcomes.items():
        if groups and (groups[-1][1].message, groups[-1][1].status, groups[-1][1].warnings) == \
                (o.message, o.status, o.warnings):
            groups[-1][0].append(r)
        else:
            groups.append(([r], o))
    return groups


@dataclass
class Verdict:
    facts: Facts
    device: str
    hailort: Release | None           # the one release asked about, or None for all known
    outcomes: dict                    # release -> Outcome
    opens: list = field(default_factory=list)        # releases whose Hef() reads the file (real HEFs)
    runs_on: dict = field(default_factory=dict)      # device arch -> releases that run the file there

    @property
    def compatible(self) -> bool | None:
        oks = [o.ok for o in self.outcomes.values()]
        return None if all(ok is None for ok in oks) else any(oks)

    def why(self) -> str:
        """One line: which devices this HEF arch runs on, per the rules."""
        if self.compatible is None:
            return next(iter(self.outcomes.values())).message
        archs = list(self.runs_on)
        if not archs:
            return f"no HailoRT release known here runs a {self.facts.hef_arch} HEF on any device"
        where = f"a {archs[0]} device" if len(archs) == 1 else f"{', '.join(archs[:-1])} or {archs[-1]} devices"
        return f"HailoRT runs a {self.facts.hef_arch} HEF only on {where}"

    def text(self) -> str:
        f, lines = self.facts, []
        if f.emulated:
            lines += [f"{f.path}: hailopipe's emulated compiled file for {f.dfc_arch} (HEF arch {f.hef_arch})",
                      "Emulated: a Hailo device cannot load it at all (HailoRT refuses its magic: \"HEF magic does not "
                      "match\", HAILO_INVALID_HEF(26) up to 4.20, HAILO_HEF_NOT_SUPPORTED(92) from 4.21); the "
                      "architecture check below is what hailopipe's emulated VDevice applies"]
        else:
            lines.append(f"{f.path}: Hailo HEF for {f.hef_arch}, header v{f.header_version}, "
                         f"compiled by DFC {f.sdk_version or '(unknown)'}")
        arch = DEVICES[self.device][0]
        lines.append(f"Device: {self.device}" + (f" ({arch})" if arch else ""))
        which = f" (HailoRT {_v(self.hailort)})" if self.hailort else ""
        ok = [r for r, o in self.outcomes.items() if o.ok]
        if self.compatible is None:
            lines.append(f"Compatible: unknown{which}: {self.why()}")
        elif self.compatible:
            lines.append(f"Compatible: yes{which}" + ("" if self.hailort else f", with HailoRT {_ranges(ok)}"))
        else:
            lines.append(f"Compatible: no{which}: {self.why()}")
        for releases, o in _grouped(self.outcomes):
            if o.ok is False:
                lines.append(f"Not with HailoRT {_ranges(releases)}: {o.message}"
                             + (f": {o.status_text}" if o.status else ""))
            for w in o.warnings if o.ok else []:
                lines.append(f"Warning from HailoRT {_ranges(releases)}: {w}")
        if not f.emulated:
            names = ", ".join(EXTENSIONS.get(i, (f"#{i}",))[0] for i, _ in f.extensions) or "none"
            lines.append(f"Opens with HailoRT: {_ranges(self.opens)} (header v{f.header_version}; "
                         f"required extensions: {names})")
        runs = "; ".join(f"{_ranges(rs)} on {a}" for a, rs in self.runs_on.items()) or "none"
        lines.append(("Emulated VDevice accepts it with the rules of HailoRT: " if f.emulated
                      else "Runs with HailoRT: ") + runs)
        if not f.emulated and f.sdk_version:
            lines.append(_compiler_line(f))
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        def outcome(o):
            return {"ok": o.ok, "message": o.message, "status": o.status,
                    "code": STATUS.get(o.status), "warnings": o.warnings}
        return {"file": self.facts.path, "facts": asdict(self.facts), "device": self.device,
                "device_arch": DEVICES[self.device][0], "hailort": _v(self.hailort) if self.hailort else None,
                "compatible": self.compatible, "why": self.why(),
                "outcomes": {_v(r): outcome(o) for r, o in self.outcomes.items()},
                "opens": [_v(r) for r in self.opens],
                "runs_on": {a: [_v(r) for r in rs] for a, rs in self.runs_on.items()},
                "compiler": _compiler_line(self.facts) if self.facts.sdk_version and not self.facts.emulated else None}


def _compiler_line(f: Facts) -> str:
    sdk = tuple(int(p) for p in f.sdk_version.split(".")[:2] if p.isdigit())
    paired = RELEASED_WITH.get(sdk)
    head = f"Compiler: DFC {f.sdk_version}" + (f", released with HailoRT {_v(paired)} (Hailo Model Zoo release notes)"
                                               if paired else "")
    if any(i == STRICT for i, _ in f.extensions):
        return head + f"; STRICT_RUNTIME_VERSIONING: HailoRT 5.x loads it only at version {'.'.join(map(str, sdk))}"
    return head + "; HailoRT does not compare it with its own version (hef.cpp only logs it)"


def check_facts(f: Facts, device: str, hailort: Release | None = None) -> Verdict:
    """The verdict for `f` on `device` at one release (or all known), with the releases that open it
    and the devices and releases that run it."""
    if device not in DEVICES:
        raise PipelineError(f"device {device!r}: not one of {', '.join(DEVICES)}")
    releases = [hailort] if hailort else RELEASES
    outcomes = {r: evaluate(f, device, r) for r in releases}
    opens = [] if f.emulated else [r for r in RELEASES if _open(f, r) is None]
    runs_on = {}
    for name in DEVICES:  # the devices the file runs on, with any known release
        arch = DEVICES[name][0]
        rs = [r for r in RELEASES if arch and arch not in runs_on and evaluate(f, name, r).ok]
        if rs:
            runs_on[arch] = rs
    return Verdict(f, device, hailort, outcomes, opens, runs_on)


def check(source, device: str, hailort: str | None = None) -> Verdict:
    """The verdict for a compiled file (path or bytes) on `device`, at one release or all known."""
    from hailopipe.formats import parse_hef

    release = parse_release(hailort) if hailort else None
    return check_facts(facts(*parse_hef.read(source)), device, release)
