"""HailoRT's legacy flow: `VDevice`, `configure` -> `ConfiguredNetwork`, vstream params and
`InferVStreams`, whole batches keyed by stream name; see `hailopipe.runtime`.

The emulated device has an architecture and a HailoRT release, which HailoRT's VDevice does not take
as arguments (a real one reads them from the board and the installed library):

    VDevice(device_arch="hailo8l", hailort_version="4.20")   # or $HAILOPIPE_DEVICE_ARCH / $HAILOPIPE_HAILORT_VERSION

Defaults: hailo8, and the newest HailoRT known for the device (4.23.0 for the Hailo-8 family, 5.2.0
for the others).  `configure` and `create_infer_model` then refuse a HEF that release would refuse on
that device (`formats.compatibility`), with HailoRT's message and status, e.g.
"HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93)" (4.21+) or "HAILO_INVALID_HEF(26)" (4.20 and older), as
hailo_platform's exception class for it.  HailoRT refuses at configure; the emulator refuses at
create_infer_model already, before it builds the engine.  The warnings HailoRT logs for a HEF it
accepts (a Hailo-8L HEF on a Hailo-8 runs at lower performance) go to `VDevice.warnings`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.formats import compatibility
from hailopipe.formats.streams import FormatType, VStreamInfo
from hailopipe.runtime.hef import HEF, HailoRTException, status_exception
from hailopipe.runtime.infer_model import InferModel, InferStream

log = logging.getLogger(__name__)


class HailoStreamInterface(enum.Enum):
    PCIe = 0
    INTEGRATED = 1
    ETH = 2
    MIPI = 3


class HailoSchedulingAlgorithm(enum.Enum):
    NONE = 0
    ROUND_ROBIN = 1


class ConfiguredNetwork:
    def __init__(self, hef: HEF):
        self.hef = hef
        self.model = InferModel(hef)
        self.name = hef.get_network_group_names()[0]

    def create_params(self) -> dict:
        return {}

    @contextlib.contextmanager
    def activate(self, params: dict | None = None):
        yield self

    def get_input_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return self.hef.get_input_vstream_infos(name)

    def get_output_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return self.hef.get_output_vstream_infos(name)


@dataclass
class VDeviceParams:
    scheduling_algorithm: HailoSchedulingAlgorithm = HailoSchedulingAlgorithm.ROUND_ROBIN
    device_count: int = 1
    group_id: str = "UNIQUE"
    extra: dict = field(default_factory=dict)


class VDevice:
    """The emulated device: `configure(hef)` (legacy flow) or `create_infer_model(path)`."""

    def __init__(self, params: VDeviceParams | None = None, *, device_ids=None, device_arch: str | None = None,
                 hailort_version: str | None = None):
        self.params = params or VDeviceParams()
        self.device_arch = device_arch or os.environ.get("HAILOPIPE_DEVICE_ARCH") or "hailo8"
        if self.device_arch not in compatibility.DEVICES:
            raise HailoRTException(f"VDevice: device_arch {self.device_arch!r} is not one of "
                                   f"{', '.join(compatibility.DEVICES)}")
        version = hailort_version or os.environ.get("HAILOPIPE_HAILORT_VERSION")
        try:
            self.hailort_version = (compatibility.parse_release(version, "VDevice: hailort_version") if version
                                    else compatibility.default_release(self.device_arch))
        except PipelineError as exc:
            raise HailoRTException(str(exc)) from None
        refused = compatibility.device_refusal(self.device_arch, self.hailort_version)
        if refused:
            raise self._error("VDevice", refused)
        self._configured: list[ConfiguredNetwork] = []
        self._open = True
        self.warnings: list[str] = []  # HailoRT's warnings for the HEFs checked (e.g. a Hailo-8L HEF on a Hailo-8)

    def _error(self, label: str, o: "compatibility.Outcome") -> HailoRTException:
        release = ".".join(map(str, self.hailort_version))
        status = f": status={o.status_text}" if o.status else ""
        return status_exception(f"{label}: {o.message}{status} (HailoRT {release}, {self.device_arch} device)",
                                o.status, compatibility.STATUS.get(o.status))

    def check_hef(self, hef: HEF) -> None:
        """Refuse `hef` as this device's HailoRT release would (HailoRTException); log its warnings."""
        o = compatibility.evaluate(compatibility.facts(hef.info, hef.compiled), self.device_arch,
                                   self.hailort_version)
        if not o.ok:
            raise self._error(hef.path or "<bytes>", o)
        for warning in o.warnings:  # HailoRT logs them as warnings; here a run's output stays the run's
            self.warnings.append(f"{hef.path or '<bytes>'}: {warning}")
            log.debug("%s", self.warnings[-1])

    @staticmethod
    def create_params() -> VDeviceParams:
        return VDeviceParams()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def release(self) -> None:
        self._configured.clear()
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise HailoRTException("VDevice used after release()")

    @property
    def loaded_network_groups(self) -> list[ConfiguredNetwork]:
        return list(self._configured)

    def configure(self, hef: HEF, configure_params=None) -> list[ConfiguredNetwork]:
        self._check_open()
        if not isinstance(hef, HEF):
            raise HailoRTException("VDevice.configure expects a HEF object")
        self.check_hef(hef)
        ng = ConfiguredNetwork(hef)
        self._configured.append(ng)
        return [ng]

    def create_infer_model(self, hef_source: str | os.PathLike | bytes | HEF, name: str = "") -> InferModel:
        self._check_open()
        hef = hef_source if isinstance(hef_source, HEF) else HEF(hef_source)
        self.check_hef(hef)
        return InferModel(hef, name)


class ConfigureParams:
    @staticmethod
    def create_from_hef(hef: HEF, interface: HailoStreamInterface | None = None) -> dict:
        return {name: {} for name in hef.get_network_group_names()}


def _vstream_params(configured_network: ConfiguredNetwork, format_type, direction: str) -> dict:
    infos = (configured_network.get_input_vstream_infos() if direction == "input"
             else configured_network.get_output_vstream_infos())
    return {i.name: {"format_type": format_type or FormatType.AUTO} for i in infos}


class InputVStreamParams:
    @staticmethod
    def make(configured_network, quantized=None, format_type=None, timeout_ms=None, queue_size=None, network_name=None):
        return _vstream_params(configured_network, format_type, "input")


class OutputVStreamParams:
    @staticmethod
    def make(configured_network, quantized=None, format_type=None, timeout_ms=None, queue_size=None, network_name=None):
        return _vstream_params(configured_network, format_type, "output")


class InferVStreams:
    """`with InferVStreams(ng, ivp, ovp) as pipe: pipe.infer({name: batch})` -> {output name: batch}."""

    def __init__(self, configured_network: ConfiguredNetwork, input_params: dict, output_params: dict,
                 tf_nms_format: bool = False):
        self._model = configured_network.model
        self._in = self._streams(self._model.inputs, input_params, "input")
        self._out = self._streams(self._model.outputs, output_params, "output")

    @staticmethod
    def _streams(streams: list[InferStream], params: dict, kind: str) -> dict[str, InferStream]:
        names = [s.name for s in streams]
        if sorted(params) != sorted(names):
            raise HailoRTException(f"{kind} vstream params for {sorted(params)} do not match the model's {names}")
        out = {}
        for s in streams:
            out[s.name] = InferStream(s.info)
            out[s.name].set_format_type(params[s.name]["format_type"])
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def infer(self, input_data) -> dict[str, np.ndarray]:
        if not isinstance(input_data, dict):
            if len(self._in) != 1:
                raise HailoRTException(f"the model has {len(self._in)} inputs: pass a dict keyed by stream name")
            input_data = {next(iter(self._in)): input_data}
        if set(input_data) != set(self._in):
            raise HailoRTException(f"input names {sorted(input_data)} do not match the model's {sorted(self._in)}")
        batches = {name: self._in[name].batch(x) for name, x in input_data.items()}
        if len({len(b) for b in batches.values()}) != 1:
            raise HailoRTException("all inputs must have the same number of frames")
        (in_name, stream), (out_name, out_stream) = next(iter(self._in.items())), next(iter(self._out.items()))
        return {out_name: self._model._run(batches[in_name], stream.format.type, out_stream.format.type)}
