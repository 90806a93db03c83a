"""Test stand-in for HailoRT's Python package (hailo_platform); see fake_hailo_common.

Records every call and refuses what HailoRT refuses: no device (VDevice creation fails when
`Device.scan()` is empty), a HEF for the other device family than this HailoRT major, inference
outside `network_group.activate()`, input keyed by anything but the vstream names, arrays whose
itemsize does not match the vstream format or whose shape is not [batch] + info.shape.  Outputs
come from hailopipe's engine on the emulator file carried inside the fake HEF; the enums and
VStreamInfo are hailopipe.runtime's (HailoRT-shaped) ones.
"""

from __future__ import annotations

import contextlib

import fake_hailo_common as common
import numpy as np
from fake_hailo_common import FakeLimitation, record, summary

from hailopipe import runtime
from hailopipe.runtime import FormatType, HailoStreamInterface, VStreamInfo

__all__ = ["ConfigureParams", "Device", "FormatType", "HEF", "HailoRTException", "HailoStreamInterface",
           "InferVStreams", "InputVStreamParams", "OutputVStreamParams", "VDevice"]
__version__ = common.HAILORT_VERSION


class HailoRTException(Exception):
    pass


class Device:
    @classmethod
    def scan(cls) -> list[str]:
        record("Device.scan", devices=list(common.DEVICES))
        return list(common.DEVICES)


class HEF:
    def __init__(self, hef_source):
        record("HEF", source=str(hef_source) if isinstance(hef_source, str) else type(hef_source).__name__)
        if not isinstance(hef_source, str):
            raise FakeLimitation("the stand-in HEF takes a path (str)")
        from hailopipe.runtime import HEF as EmulatedHEF
        from hailopipe.runtime import InferModel

        self._info, self._meta, emulated = common.read_hef(hef_source)
        self._group = self._info.network_groups[0]
        self.model = InferModel(EmulatedHEF(emulated))

    def _vstreams(self, streams) -> list[VStreamInfo]:
        return list(streams)

    def get_input_vstream_infos(self, network_name=None) -> list[VStreamInfo]:
        return self._vstreams(self._group.inputs)

    def get_output_vstream_infos(self, network_name=None) -> list[VStreamInfo]:
        return self._vstreams(self._group.outputs)

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
    def __init__(self, hef: HEF):
        self.hef, self.name, self.active = hef, hef.get_network_group_names()[0], False

    def create_params(self) -> dict:
        return {}

    @contextlib.contextmanager
    def activate(self, network_group_params=None):
        record("ConfiguredNetwork.activate")
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


class VDevice(runtime.VDevice):
    """hailopipe.runtime's VDevice (context manager, release) that needs a device and a HEF of its family."""

    def __init__(self, params=None, *, device_ids=None):
        record("VDevice", device_ids=device_ids)
        if not common.DEVICES:
            raise HailoRTException("Failed to create VDevice: no physical device found (HAILO_OUT_OF_PHYSICAL_DEVICES)")
        super().__init__(params, device_ids=device_ids)

    def configure(self, hef: HEF, configure_params_by_name=None) -> list[ConfiguredNetwork]:
        record("VDevice.configure", params=sorted(configure_params_by_name or {}))
        arch = hef._info.hw_arch
        wanted = 4 if arch.startswith("HAILO8") else 5
        if common.major(common.HAILORT_VERSION) != wanted:
            raise HailoRTException(f"HEF for {arch} is not supported by HailoRT {common.HAILORT_VERSION} "
                                   "(HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE)")
        if configure_params_by_name and set(configure_params_by_name) != set(hef.get_network_group_names()):
            raise HailoRTException("configure params are not keyed by the HEF's network group names")
        return [ConfiguredNetwork(hef)]


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
        record("InferVStreams.infer", data=summary(input_data), active=self._ng.active)
        if not self._entered:
            raise HailoRTException("InferVStreams.infer outside its `with` block")
        if not self._ng.active:
            raise HailoRTException("network group is not activated (use `with network_group.activate():`)")
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
        model, norm = self._ng.hef.model, self._ng.hef._meta["normalization"]
        xf = x.astype(np.float32)
        if norm is not None:
            xf = (xf - np.float32(norm[0][0])) / np.float32(norm[1][0])
        (out_info,) = self._ng.get_output_vstream_infos()
        if self._out[out_info.name]["format_type"] == FormatType.FLOAT32:
            return {out_info.name: model.run_float(xf).astype(np.float32)}
        return {out_info.name: model.run_raw(model.quantize_input(xf))}
