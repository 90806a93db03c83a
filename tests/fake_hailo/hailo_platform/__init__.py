"""Test stand-in for HailoRT's Python package (hailo_platform); see fake_hailo_common.

Records every call and does what HailoRT's pyhailort.py does on its two branches (hailort
`hailo8` = 4.x, `master` = 5.x; $FAKE_HAILORT_VERSION picks one):

- `HEF(path: str | bytes)`; anything else is a ValueError, as in pyhailort.
- `VDevice(params)`: no device -> HAILO_OUT_OF_PHYSICAL_DEVICES.  Its default params schedule
  ROUND_ROBIN (`HailoRTDefaults::get_vdevice_params`, both branches).  With the scheduler on,
  `network_group.activate()` only warns that it is deprecated and returns an empty context, and
  inference needs no activation; with `HailoSchedulingAlgorithm.NONE`, InferVStreams needs it.
- `configure()` (the InferVStreams flow): refuses a HEF of the other device family; on HailoRT 5.x
  it is not implemented (`VDeviceHrpcClient::configure` -> HAILO_NOT_IMPLEMENTED for a Hailo-10H:
  "use InferModel instead"; Hailo-15's integrated path is not modelled).
- `create_infer_model(str | bytes)` (HailoRT >= 4.18 and 5.x): hailopipe.runtime's InferModel on
  the emulator file inside the fake HEF; `ConfiguredInferModel.run` takes at most
  `get_async_queue_size()` bindings (4 here; the real size is the device's).
- Input keyed by anything but the vstream names, arrays whose itemsize does not match the vstream
  format or whose shape is not [batch] + info.shape, are refused.  Outputs come from hailopipe's
  engine on the emulator file carried inside the fake HEF; the enums and VStreamInfo are
  hailopipe.runtime's (HailoRT-shaped) ones.
"""

from __future__ import annotations

import contextlib
import logging

import fake_hailo_common as common
import numpy as np
from fake_hailo_common import record, summary

from hailopipe import runtime
from hailopipe.runtime import FormatType, HailoSchedulingAlgorithm, HailoStreamInterface, VStreamInfo

__all__ = ["ConfigureParams", "Device", "FormatType", "HEF", "HailoRTException", "HailoSchedulingAlgorithm",
           "HailoStreamInterface", "InferVStreams", "InputVStreamParams", "OutputVStreamParams", "VDevice"]
__version__ = common.HAILORT_VERSION
_log = logging.getLogger("HailoRT")


class HailoRTException(Exception):
    pass


class HailoRTNetworkGroupNotActivatedException(HailoRTException):
    pass


def _version() -> tuple[int, int]:
    major, minor = (common.HAILORT_VERSION.split(".") + ["0"])[:2]
    return int(major), int(minor)


class Device:
    @classmethod
    def scan(cls) -> list[str]:
        record("Device.scan", devices=list(common.DEVICES))
        return list(common.DEVICES)


class HEF:
    def __init__(self, hef_source):
        record("HEF", source=hef_source if isinstance(hef_source, str) else type(hef_source).__name__)
        if not isinstance(hef_source, (str, bytes)):
            raise ValueError("HEF can only be created from a file path (str) or a buffer (bytes)")
        self._info, self._meta, self.emulated = common.read_hef(hef_source)
        self._group = self._info.network_groups[0]

    def get_input_vstream_infos(self, network_name=None) -> list[VStreamInfo]:
        return list(self._group.inputs)

    def get_output_vstream_infos(self, network_name=None) -> list[VStreamInfo]:
        return list(self._group.outputs)

    def get_network_group_names(self) -> list[str]:
        return [self._group.name]

    def get_networks_names(self, network_group_name=None) -> list[str]:
        return list(self._group.networks)

    def get_sorted_output_names(self, network_group_name=None) -> list[str]:
        return [s.name for s in self._group.outputs]


class ConfigureParams:
    @staticmethod
    def create_from_hef(hef, interface):
        record("ConfigureParams.create_from_hef", interface=getattr(interface, "name", str(interface)))
        if not isinstance(hef, HEF) or not isinstance(interface, HailoStreamInterface):
            raise HailoRTException("create_from_hef(hef=HEF, interface=HailoStreamInterface)")
        return {name: {"interface": interface} for name in hef.get_network_group_names()}


class ConfiguredNetwork:
    def __init__(self, hef: HEF, scheduled: bool):
        self.hef, self.name, self.active, self.scheduled = hef, hef.get_network_group_names()[0], False, scheduled
        self.model = runtime.InferModel(hef.emulated)

    def create_params(self) -> dict:
        return {}

    def activate(self, network_group_params=None):
        record("ConfiguredNetwork.activate", scheduled=self.scheduled)
        if self.scheduled:
            _log.warning("Calls to `activate()` when working with scheduler are deprecated! On future versions this "
                         "call will raise an error.")
            return contextlib.nullcontext()
        return self._activated()

    @contextlib.contextmanager
    def _activated(self):
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def get_input_vstream_infos(self, network_name=None):
        return self.hef.get_input_vstream_infos()

    def get_output_vstream_infos(self, network_name=None):
        return self.hef.get_output_vstream_infos()

    def get_networks_names(self):
        return self.hef.get_networks_names()


class _ConfiguredInferModel(runtime.ConfiguredInferModel):
    QUEUE_SIZE = 4

    def get_async_queue_size(self) -> int:
        return self.QUEUE_SIZE

    def run(self, bindings, timeout=None) -> None:
        blist = [bindings] if isinstance(bindings, runtime.Bindings) else list(bindings)
        record("ConfiguredInferModel.run", bindings=len(blist), timeout=timeout)
        if len(blist) > self.QUEUE_SIZE:
            raise HailoRTException(f"run: {len(blist)} bindings exceed the async queue size {self.QUEUE_SIZE} "
                                   "(HAILO_QUEUE_IS_FULL)")
        super().run(blist, timeout)


class _InferModel(runtime.InferModel):
    def configure(self):
        record("InferModel.configure", formats=[s.format.type.name for s in self.inputs + self.outputs])
        return _ConfiguredInferModel(self)


def _check_family(hef: HEF) -> None:
    arch = hef._info.hw_arch
    wanted = 4 if any(a.startswith("HAILO8") for a in hef._info.compatible_archs) else 5
    if _version()[0] != wanted:
        raise HailoRTException(f"HEF for {arch} is not supported by HailoRT {common.HAILORT_VERSION} "
                               "(HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE)")


class VDevice(runtime.VDevice):
    """hailopipe.runtime's VDevice (context manager, release) that needs a device and a HEF of its family."""

    def __init__(self, params=None, *, device_ids=None):
        record("VDevice", device_ids=device_ids,
               scheduling=getattr(getattr(params, "scheduling_algorithm", None), "name", "ROUND_ROBIN"))
        if not common.DEVICES:
            raise HailoRTException("Failed to create VDevice: no physical device found (HAILO_OUT_OF_PHYSICAL_DEVICES)")
        super().__init__(params, device_ids=device_ids)

    def configure(self, hef: HEF, configure_params_by_name=None) -> list[ConfiguredNetwork]:
        record("VDevice.configure", params=sorted(configure_params_by_name or {}))
        if not isinstance(hef, HEF):
            raise HailoRTException("VDevice.configure expects a HEF object")
        _check_family(hef)
        if _version()[0] >= 5:
            raise HailoRTException("Not supported. Did you try calling `create_configure_params` on H10? If so, use "
                                   "InferModel instead (HAILO_NOT_IMPLEMENTED)")
        if configure_params_by_name and set(configure_params_by_name) != set(hef.get_network_group_names()):
            raise HailoRTException("configure params are not keyed by the HEF's network group names")
        return [ConfiguredNetwork(hef, self.params.scheduling_algorithm != HailoSchedulingAlgorithm.NONE)]

    def create_infer_model(self, hef_source, name=""):
        record("VDevice.create_infer_model", source=hef_source if isinstance(hef_source, str) else "bytes")
        if _version() < (4, 18):
            raise AttributeError("'VDevice' object has no attribute 'create_infer_model' (HailoRT < 4.18)")
        hef = HEF(hef_source)
        _check_family(hef)
        return _InferModel(hef.emulated, name)


def _make(configured_network, infos, format_type, direction: str) -> dict:
    record(f"{direction}VStreamParams.make", format_type=getattr(format_type, "name", None))
    if not isinstance(configured_network, ConfiguredNetwork):
        raise HailoRTException("make() needs a configured network group")
    return {i.name: {"format_type": format_type or FormatType.AUTO} for i in infos}


class InputVStreamParams:
    @staticmethod
    def make(configured_network, quantized=None, format_type=None, timeout_ms=None, queue_size=None,
             network_name=None):
        return _make(configured_network, configured_network.get_input_vstream_infos(), format_type, "Input")


class OutputVStreamParams:
    @staticmethod
    def make(configured_network, quantized=None, format_type=None, timeout_ms=None, queue_size=None,
             network_name=None):
        return _make(configured_network, configured_network.get_output_vstream_infos(), format_type, "Output")


class InferVStreams:
    def __init__(self, configured_net_group, input_vstreams_params, output_vstreams_params, tf_nms_format=False):
        self._ng, self._in, self._out = configured_net_group, input_vstreams_params, output_vstreams_params
        self._entered = False

    def __enter__(self):
        self._entered = True
        return self

    def __exit__(self, *exc):
        self._entered = False
        return False

    def infer(self, input_data) -> dict:
        record("InferVStreams.infer", data=summary(input_data), active=self._ng.active, scheduled=self._ng.scheduled)
        if not self._entered:
            raise HailoRTException("InferVStreams.infer outside its `with` block")
        if not (self._ng.active or self._ng.scheduled):
            raise HailoRTNetworkGroupNotActivatedException("Network group is not activated")
        (info,) = self._ng.get_input_vstream_infos()
        if isinstance(input_data, np.ndarray):
            input_data = {info.name: input_data}
        if set(input_data) != {info.name}:
            raise HailoRTException(f"input names {sorted(input_data)} are not the vstreams [{info.name!r}]")
        x = input_data[info.name]
        fmt = self._in[info.name]["format_type"]
        itemsize = {FormatType.FLOAT32: 4, FormatType.UINT16: 2}.get(fmt, 1)
        if x.dtype.itemsize != itemsize:
            raise HailoRTException(f"{info.name}: data itemsize {x.dtype.itemsize} does not match format {fmt.name}")
        if x.ndim != 1 + len(info.shape) or tuple(x.shape[1:]) != info.shape:
            raise HailoRTException(f"{info.name}: shape {list(x.shape)} is not [batch] + {list(info.shape)}")
        model = self._ng.model
        (out_info,) = self._ng.get_output_vstream_infos()
        if self._out[out_info.name]["format_type"] == FormatType.FLOAT32:
            return {out_info.name: model.run_float(x.astype(np.float32)).astype(np.float32)}
        return {out_info.name: model.run_raw(model.quantize_input(x.astype(np.float32)))}
