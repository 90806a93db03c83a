"""`hailopipe check FILE --device ARCH [--hailort X.Y[.Z]]` and the emulated VDevice's architecture check
(hailopipe.formats.compatibility): what the user sees (the verdict text, the exit status, HailoRT's
status name and code in the exception) for the real Hailo-8 HEF, variants of it (another target, a
newer compiler's extension, a newer header, a 5.x HEF), and emulated files for hailo8 and hailo8l."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import zlib

import pytest

from hailopipe.formats import ehef
from hailopipe.formats.hef_schema import MESSAGES
from hailopipe.runtime import (
    HEF,
    HailoRTException,
    HailoRTHEFNotCompatibleWithDevice,
    HailoRTInvalidHEFException,
    InferVStreams,
    InputVStreamParams,
    OutputVStreamParams,
    RealHefError,
    VDevice,
)
from tests.test_cli import REAL_HEF, SCRIPT, needs_real_hef

MAGIC = 0x01484546
NOT_COMPATIBLE_4 = "HEF format is not compatible with device. Device arch: HAILO8L, HEF arch: HAILO8"
NO_HAILO8_IN_5 = "Hailo8 devices are only supported in versions 4.x.x and earlier: HAILO_NOT_SUPPORTED(79)"


def check(*args, expect: int) -> subprocess.CompletedProcess:
    p = subprocess.run([SCRIPT, "check", *map(str, args)], capture_output=True, text=True)
    assert p.returncode == expect, f"check {args}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def hef_file(path, body: bytes, header_version: int = 0):
    """`body` (a ProtoHEFHef) as a v0 (MD5) or v1 (CRC-32, no ccws) HEF file."""
    if header_version == 0:
        data = struct.pack(">IIII", MAGIC, 0, len(body), 0) + hashlib.md5(body).digest() + body
    else:
        data = struct.pack(">IIIIQI", MAGIC, 1, len(body), zlib.crc32(body), 0, 0) + body
    path.write_bytes(data)
    return path


def variant(tmp_path, name: str, header_version: int = 0, **changes):
    """The real HEF with its header or extensions changed: a protobuf message appended to the body
    merges into it (singular fields replaced, repeated ones extended)."""
    extra = MESSAGES["Hef"]()
    for field, value in changes.items():
        if field == "extensions":
            for index, label in value:
                extra.extensions.add(type_index=index, name=label)
        else:
            setattr(extra.header, field, value)
    body = REAL_HEF.read_bytes()[32:] + extra.SerializeToString()
    return hef_file(tmp_path / name, body, header_version)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory, fitted_qnet):
    d = tmp_path_factory.mktemp("check")
    for arch in ("hailo8", "hailo8l"):
        (d / f"{arch}.hef").write_bytes(ehef.compile_network(fitted_qnet, arch))
    return d


# --- the real HEF (DFC 3.27.0, hailo8 -> HAILO8P) ------------------------------------------------

@needs_real_hef
def test_real_hef_on_hailo8l_is_refused_with_each_releases_status():
    out = check(REAL_HEF, "--device", "hailo8l", expect=1).stdout
    assert out.splitlines()[:3] == [f"{REAL_HEF}: Hailo HEF for HAILO8P, header v0, compiled by DFC 3.27.0",
                                    "Device: hailo8l (HAILO8L)",
                                    "Compatible: no: HailoRT runs a HAILO8P HEF only on a HAILO8 device"]
    assert f"Not with HailoRT 4.15.0-4.20.1: {NOT_COMPATIBLE_4}: HAILO_INVALID_HEF(26)\n" in out
    assert f"Not with HailoRT 4.21.0-4.23.0: {NOT_COMPATIBLE_4}: HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93)\n" in out
    assert f"Not with HailoRT 5.0.0-5.2.0: {NO_HAILO8_IN_5}\n" in out
    assert ("Opens with HailoRT: 4.15.0-5.2.0 (header v0; required extensions: ABBALE, PADDED_DDR_BUFFERS, "
            "PERIPH_CALCULATION_IN_HAILORT, KO_RUN_ASAP)\n") in out
    assert "Runs with HailoRT: 4.15.0-4.23.0 on HAILO8\n" in out
    assert "Compiler: DFC 3.27.0, released with HailoRT 4.17" in out


@needs_real_hef
@pytest.mark.parametrize("device, expect, lines", [
    ("hailo8", 0, ["Compatible: yes, with HailoRT 4.15.0-4.23.0", f"Not with HailoRT 5.0.0-5.2.0: {NO_HAILO8_IN_5}"]),
    ("hailo8r", 0, ["Device: hailo8r (HAILO8)", "Compatible: yes, with HailoRT 4.15.0-4.23.0",
                    "Warning from HailoRT 4.15.0-4.23.0: HEF was compiled assuming clock rate of 400 MHz, while the "
                    "device clock rate is 200 MHz. FPS calculations might not be accurate."]),
    ("hailo15h", 1, ["Not with HailoRT 5.1.0-5.2.0: HEF format is not compatible with device. Device arch: HAILO15H, "
                     "HEF compatible for: HAILO8: HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93)"]),
    ("hailo10p", 1, ["Device: hailo10p", "Compatible: unknown: HailoRT names no hailo10p device "
                     "(hailo_device_architecture_t, 4.23.0 and 5.2.0): no rule says which HEFs it runs"]),
])
def test_real_hef_on_other_devices(device, expect, lines):
    out = check(REAL_HEF, "--device", device, expect=expect).stdout.splitlines()
    assert all(line in out for line in lines), out


@needs_real_hef
@pytest.mark.parametrize("device, hailort, expect, line", [
    ("hailo8l", "4.20", 1, f"Not with HailoRT 4.20.0: {NOT_COMPATIBLE_4}: HAILO_INVALID_HEF(26)"),
    ("hailo8l", "4.23.0", 1, f"Not with HailoRT 4.23.0: {NOT_COMPATIBLE_4}: HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93)"),
    ("hailo8", "5.2", 1, f"Not with HailoRT 5.2.0: {NO_HAILO8_IN_5}"),
    ("hailo8", "4.17", 0, "Compatible: yes (HailoRT 4.17.0)"),
])
def test_one_release(device, hailort, expect, line):
    out = check(REAL_HEF, "--device", device, "--hailort", hailort, expect=expect).stdout.splitlines()
    assert line in out, out
    assert not any(f"HailoRT {v}" in " ".join(out[:4]) for v in ("4.15.0-", "5.0.0-")), out  # only that release


@needs_real_hef
def test_json_verdict():
    js = json.loads(check(REAL_HEF, "--device", "hailo8l", "--hailort", "4.20", "--json", expect=1).stdout)
    assert js["compatible"] is False and js["device_arch"] == "HAILO8L" and js["hailort"] == "4.20.0"
    assert js["outcomes"]["4.20.0"] == {"ok": False, "message": NOT_COMPATIBLE_4, "status": "HAILO_INVALID_HEF",
                                        "code": 26, "warnings": []}
    assert js["runs_on"]["HAILO8"][-1] == "4.23.0" and js["facts"]["sdk_version"] == "3.27.0"


# --- variants of the real HEF ------------------------------------------------------------------

@needs_real_hef
def test_a_hailo8l_hef_runs_on_hailo8_at_lower_performance(tmp_path):
    path = variant(tmp_path, "l.hef", hw_arch=3)  # PROTO__HW_ARCH__HAILO8L
    assert "Compatible: yes, with HailoRT 4.15.0-4.23.0" in check(path, "--device", "hailo8l", expect=0).stdout
    out = check(path, "--device", "hailo8", expect=0).stdout
    assert ("Warning from HailoRT 4.15.0-4.23.0: HEF was compiled for Hailo8L device, while the device itself is "
            "Hailo8. This will result in lower performance.") in out
    assert "Runs with HailoRT: 4.15.0-4.23.0 on HAILO8; 4.15.0-4.23.0 on HAILO8L" in out


@needs_real_hef
def test_a_newer_compilers_extension_fails_on_an_older_hailort(tmp_path):
    label = "External resources (EXTERNAL_RESOURCES)"
    path = variant(tmp_path, "new.hef", extensions=[(31, label)])
    out = check(path, "--device", "hailo8", "--hailort", "4.20", expect=1).stdout
    assert (f"Not with HailoRT 4.20.0: Failed opening non-compatible HEF with the following unsupported extensions: "
            f"{label}: HAILO_INVALID_HEF(26)") in out.splitlines()
    assert "Opens with HailoRT: 4.21.0-5.2.0" in out
    assert "Compatible: yes, with HailoRT 4.21.0-4.23.0" in check(path, "--device", "hailo8", expect=0).stdout
    unknown = variant(tmp_path, "future.hef", extensions=[(99, "Something new (NEW)")])
    out = check(unknown, "--device", "hailo8", expect=1).stdout
    assert "Opens with HailoRT: none" in out and "HAILO_HEF_NOT_SUPPORTED(92)" in out


@needs_real_hef
def test_a_newer_header_fails_on_an_older_hailort(tmp_path):
    path = variant(tmp_path, "v1.hef", header_version=1)
    out = check(path, "--device", "hailo8", "--hailort", "4.15", expect=1).stdout
    assert "Not with HailoRT 4.15.0: HEF version does not match: HAILO_INVALID_HEF(26)" in out.splitlines()
    assert "Compatible: yes, with HailoRT 4.17.0-4.23.0" in check(path, "--device", "hailo8", expect=0).stdout


@needs_real_hef
def test_hailo15_hefs_need_hailort5_and_strict_versioning(tmp_path):
    h15 = variant(tmp_path, "h15.hef", hw_arch=103)  # HAILO15H (HAILO1XH in 5.x)
    out = check(h15, "--device", "hailo15h", expect=0).stdout
    assert "Compatible: yes, with HailoRT 4.15.0-4.21.0, 5.0.0-5.2.0" in out
    assert ("Not with HailoRT 4.22.0-4.23.0: HEF arch HAILO15H is not valid. Please use HailoRT v5.x instead.: "
            "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93)") in out.splitlines()
    assert "Runs with HailoRT: 4.15.0-4.21.0, 5.0.0-5.2.0 on HAILO15H; 4.18.0-4.21.0, 5.0.0-5.2.0 on HAILO10H" in out
    strict = variant(tmp_path, "strict.hef", hw_arch=103, sdk_version_str="5.1.0",
                     extensions=[(35, "Strict runtime versioning (STRICT_RUNTIME_VERSIONING)")])
    out = check(strict, "--device", "hailo10h", expect=0).stdout
    assert "Compatible: yes, with HailoRT 5.1.0-5.1.1" in out
    assert ("Not with HailoRT 5.2.0: DFC version from which this HEF was created (5.1.0) is different from library "
            "version (5.2.0), which is not allowed for this model.: HAILO_INVALID_HEF(26)") in out.splitlines()
    assert "STRICT_RUNTIME_VERSIONING: HailoRT 5.x loads it only at version 5.1" in out


# --- emulated files --------------------------------------------------------------------------

@pytest.mark.parametrize("arch, device, expect, line", [
    ("hailo8", "hailo8l", 1, f"Not with HailoRT 4.21.0-4.23.0: {NOT_COMPATIBLE_4}: HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93)"),
    ("hailo8", "hailo8", 0, "Compatible: yes, with HailoRT 4.15.0-4.23.0"),
    ("hailo8l", "hailo8l", 0, "Compatible: yes, with HailoRT 4.15.0-4.23.0"),
    ("hailo8l", "hailo8", 0, "Warning from HailoRT 4.15.0-4.23.0: HEF was compiled for Hailo8L device, while the "
                             "device itself is Hailo8. This will result in lower performance."),
    ("hailo8l", "hailo15h", 1, "Compatible: no: HailoRT runs a HAILO8L HEF only on HAILO8 or HAILO8L devices"),
])
def test_emulated_file(emulated, arch, device, expect, line):
    out = check(emulated / f"{arch}.hef", "--device", device, expect=expect).stdout.splitlines()
    want = "HAILO8P" if arch == "hailo8" else "HAILO8L"
    assert out[0] == f"{emulated / arch}.hef: hailopipe's emulated compiled file for {arch} (HEF arch {want})"
    assert out[1].startswith("Emulated: a Hailo device cannot load it at all (HailoRT refuses its magic")
    assert line in out, out
    assert not any(s.startswith(("Opens with", "Compiler:")) for s in out)


# --- bad input: exit status 2, one error line ----------------------------------------------

def test_help():
    p = subprocess.run([SCRIPT, "check", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--device ARCH" in p.stdout and "hailo10p" in p.stdout and "--hailort" in p.stdout


@pytest.mark.parametrize("args, message", [
    (("{hef}",), "the following arguments are required: --device"),
    (("{hef}", "--device", "hailo9"), "argument --device: invalid choice: 'hailo9'"),
    (("{hef}", "--device", "hailo8", "--hailort", "4.16"), "--hailort 4.16: not a HailoRT release this check knows"),
    (("{hef}", "--device", "hailo8", "--hailort", "four"), "--hailort 'four': expected a version X.Y or X.Y.Z"),
    (("{missing}", "--device", "hailo8"), "file not found"),
    (("{text}", "--device", "hailo8"), "not a compiled model (magic b'not '"),
    (("{corrupt}", "--device", "hailo8"), "MD5 mismatch"),
])
def test_bad_input(emulated, args, message):
    (emulated / "notes.txt").write_text("not a HEF at all, just a few lines of text\n" * 3)
    body = MESSAGES["Hef"](network_groups=[{}]).SerializeToString()
    (emulated / "corrupt.hef").write_bytes(struct.pack(">IIII", MAGIC, 0, len(body), 0) + b"\0" * 16 + body)
    fill = {"hef": emulated / "hailo8.hef", "missing": emulated / "nope.hef", "text": emulated / "notes.txt",
            "corrupt": emulated / "corrupt.hef"}
    p = check(*(a.format(**fill) for a in args), expect=2)
    assert p.stdout == "" and message in p.stderr and p.stderr.startswith("error: ")
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


# --- the emulated VDevice ----------------------------------------------------------------------

@pytest.mark.parametrize("version, kind, status, code", [
    (None, HailoRTHEFNotCompatibleWithDevice, "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE", 93),  # 4.23.0, the default
    ("4.20", HailoRTInvalidHEFException, "HAILO_INVALID_HEF", 26),
])
def test_vdevice_refuses_a_hef_for_another_architecture(emulated, version, kind, status, code):
    path = emulated / "hailo8.hef"
    release = "4.20.0" if version else "4.23.0"
    with VDevice(device_arch="hailo8l", hailort_version=version) as vdevice:
        with pytest.raises(kind) as err:
            vdevice.create_infer_model(path)
        assert str(err.value) == f"{path}: {NOT_COMPATIBLE_4}: status={status}({code}) (HailoRT {release}, hailo8l device)"
        assert (err.value.status, err.value.status_code) == (status, code)
        with pytest.raises(kind, match=rf"status={status}\({code}\)"):
            vdevice.configure(HEF(path))


def test_vdevice_runs_what_its_architecture_accepts(emulated, monkeypatch):
    with VDevice() as vdevice:  # hailo8 and HailoRT 4.23.0 by default
        assert (vdevice.device_arch, vdevice.hailort_version) == ("hailo8", (4, 23, 0))
        for arch in ("hailo8", "hailo8l"):  # a hailo8l HEF runs on a Hailo-8 (at lower performance)
            model = vdevice.create_infer_model(emulated / f"{arch}.hef")
            assert model.input().shape == (28, 28, 1)
        assert vdevice.warnings == [f"{emulated / 'hailo8l.hef'}: HEF was compiled for Hailo8L device, while the "
                                    "device itself is Hailo8. This will result in lower performance."]
    with VDevice(device_arch="hailo8l") as vdevice:
        ng = vdevice.configure(HEF(emulated / "hailo8l.hef"))[0]
        with InferVStreams(ng, InputVStreamParams.make(ng), OutputVStreamParams.make(ng)):
            pass
    monkeypatch.setenv("HAILOPIPE_DEVICE_ARCH", "hailo8l")
    monkeypatch.setenv("HAILOPIPE_HAILORT_VERSION", "4.18")
    with VDevice() as vdevice, pytest.raises(HailoRTInvalidHEFException, match=r"HAILO_INVALID_HEF\(26\)"):
        vdevice.create_infer_model(emulated / "hailo8.hef")


@needs_real_hef
def test_vdevice_checks_a_real_hef_before_saying_it_needs_a_device():
    with VDevice(device_arch="hailo8l") as vdevice, pytest.raises(HailoRTHEFNotCompatibleWithDevice):
        vdevice.create_infer_model(REAL_HEF)
    with VDevice() as vdevice, pytest.raises(RealHefError):
        vdevice.create_infer_model(REAL_HEF)


@pytest.mark.parametrize("kwargs, message", [
    ({"device_arch": "hailo9"}, "VDevice: device_arch 'hailo9' is not one of hailo8, hailo8r"),
    ({"hailort_version": "5.2"}, "VDevice: Hailo8 devices are only supported in versions 4.x.x and earlier: "
                                 "status=HAILO_NOT_SUPPORTED(79) (HailoRT 5.2.0, hailo8 device)"),
    ({"hailort_version": "4.16"}, "VDevice: hailort_version 4.16: not a HailoRT release this check knows"),
    ({"device_arch": "hailo10h", "hailort_version": "4.17"}, "HailoRT 4.17.0 has no HAILO10H device architecture"),
    ({"device_arch": "hailo10p"}, "HailoRT names no hailo10p device"),
])
def test_vdevice_bad_arguments(kwargs, message):
    with pytest.raises(HailoRTException) as err:
        VDevice(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
