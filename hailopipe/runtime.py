"""Deploy: load a compiled model and run it, through an API shaped after HailoRT's Python API.

    from hailopipe.runtime import HEF, VDevice, InferVStreams, InputVStreamParams, OutputVStreamParams, FormatType
    hef = HEF("models/mnist.hef")
    with VDevice() as target:
        network_group = target.configure(hef)[0]
        ivp = InputVStreamParams.make(network_group, format_type=FormatType.FLOAT32)
        ovp = OutputVStreamParams.make(network_group, format_type=FormatType.FLOAT32)
        with InferVStreams(network_group, ivp, ovp) as pipeline, network_group.activate():
            out = pipeline.infer({hef.get_input_vstream_infos()[0].name: images_nhwc})

As in HailoRT, FLOAT32 streams quantize the input (q = round_half_even(clip(x)/qp_scale + qp_zp))
and dequantize the output ((q - qp_zp) * qp_scale) at the edges; UINT8/UINT16 (or AUTO) streams
pass the raw integers.  Between the edges only integer arithmetic runs (`engine`), so float and raw
paths agree bit for bit and every run gives the same bits.
"""

from __future__ import annotations

import contextlib
import enum
import os
from dataclasses import dataclass

import numpy as np

from hailopipe import hef as hef_format
from hailopipe import quant
from hailopipe.engine import Engine
from hailopipe.errors import PipelineError


class HailoRTException(PipelineError):
    """Bad input to the runtime API (wrong shape, dtype, stream name, file)."""


class FormatType(enum.Enum):
    AUTO = 0
    UINT8 = 1
    UINT16 = 2
    FLOAT32 = 3


class FormatOrder(enum.Enum):
    NHWC = 1
    NC = 2


@dataclass(frozen=True)
class QuantInfo:
    qp_zp: float
    qp_scale: float
    limvals_min: float
    limvals_max: float


@dataclass(frozen=True)
class Format:
    type: FormatType
    order: FormatOrder


@dataclass(frozen=True)
class VStreamInfo:
    name: str
    network_name: str
    direction: str
    format: Format
    shape: tuple
    quant_info: QuantInfo


def _info(s: dict, network: str, direction: str) -> VStreamInfo:
    return VStreamInfo(s["name"], network, direction, Format(FormatType[s["format_type"]], FormatOrder[s["order"]]),
                       tuple(s["shape"]), QuantInfo(float(s["qp_zp"]), s["qp_scale"], s["limvals_min"], s["limvals_max"]))


class HEF:
    """A compiled model file (path or bytes), with HailoRT's query methods."""

    def __init__(self, source: str | os.PathLike | bytes):
        self._model = hef_format.load(source if isinstance(source, bytes) else os.fspath(source))
        meta = self._model.meta
        self._network = meta["networks"][0]
        self._inputs = [_info(s, self._network, "input") for s in meta["inputs"]]
        self._outputs = [_info(s, self._network, "output") for s in meta["outputs"]]

    @property
    def qnet(self):
        return self._model.qnet

    @property
    def hw_arch(self) -> str:
        return self._model.meta["hw_arch"]

    def get_input_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return list(self._inputs)

    def get_output_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return list(self._outputs)

    def get_network_group_names(self) -> list[str]:
        return [self._model.meta["network_group"]]

    def get_networks_names(self) -> list[str]:
        return list(self._model.meta["networks"])

    def get_sorted_output_names(self) -> list[str]:
        return [o.name for o in self._outputs]


class InferModel:
    """The executable form of a HEF: edge conversions around the integer engine."""

    def __init__(self, hef: HEF):
        self.hef = hef
        self.engine = Engine(hef.qnet)
        self.input_info = hef.get_input_vstream_infos()[0]
        self.output_info = hef.get_output_vstream_infos()[0]
        self._in_bits = hef.qnet.input_bits
        self._out_bits = hef.qnet.output.out_bits

    def _check(self, x: np.ndarray, info: VStreamInfo) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == len(info.shape):
            x = x[None]
        if x.shape[1:] != info.shape:
            raise HailoRTException(f"input {info.name}: shape {list(x.shape)}, expected [batch, "
                                   f"{', '.join(map(str, info.shape))}]")
        return x

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """float32 model-domain input -> the raw stream integers (uint8), HailoRT's input conversion."""
        q = self.input_info.quant_info
        xs = np.clip(np.asarray(x, np.float32), np.float32(q.limvals_min), np.float32(q.limvals_max))
        u = np.rint(xs.astype(np.float64) / q.qp_scale + q.qp_zp)
        hi = (1 << self._in_bits) - 1
        return np.clip(u, 0, hi).astype(np.uint8 if self._in_bits <= 8 else np.uint16)

    def dequantize_output(self, u: np.ndarray) -> np.ndarray:
        q = self.output_info.quant_info
        return quant.dequantize(u, q.qp_scale, q.qp_zp)

    def run_raw(self, u: np.ndarray) -> np.ndarray:
        """Raw stream integers in (uint8/uint16 [N, H, W, C]) -> raw integers out ([N, F])."""
        u = self._check(u, self.input_info)
        want = np.uint8 if self._in_bits <= 8 else np.uint16
        if u.dtype != want:
            raise HailoRTException(f"input {self.input_info.name}: dtype {u.dtype}, the raw "
                                   f"{self.input_info.format.type.name} stream needs {np.dtype(want).name}")
        return quant.to_unsigned(self.engine.run(quant.from_unsigned(u, self._in_bits)), self._out_bits)

    def run_float(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x, self.input_info)
        if x.dtype.kind not in "fiu":
            raise HailoRTException(f"input {self.input_info.name}: dtype {x.dtype} is not numeric")
        if x.dtype.kind == "f" and np.isnan(x).any():
            raise HailoRTException(f"input {self.input_info.name}: contains NaN")
        return self.dequantize_output(self.run_raw(self.quantize_input(x)))


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

    def get_input_vstream_infos(self):
        return self.hef.get_input_vstream_infos()

    def get_output_vstream_infos(self):
        return self.hef.get_output_vstream_infos()


class VDevice:
    """The emulated device: `configure(hef)` returns the configured network groups."""

    def __init__(self, params=None, *, device_ids=None):
        self._configured: list[ConfiguredNetwork] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def release(self) -> None:
        self._configured.clear()

    def configure(self, hef: HEF, configure_params=None) -> list[ConfiguredNetwork]:
        if not isinstance(hef, HEF):
            raise HailoRTException("VDevice.configure expects a HEF object")
        ng = ConfiguredNetwork(hef)
        self._configured.append(ng)
        return [ng]


class _VStreamParams:
    @staticmethod
    def make(configured_network: ConfiguredNetwork, quantized=None, format_type: FormatType | None = None,
             timeout_ms=None, queue_size=None, network_name=None, direction: str = "input") -> dict:
        infos = (configured_network.get_input_vstream_infos() if direction == "input"
                 else configured_network.get_output_vstream_infos())
        return {i.name: {"format_type": format_type or FormatType.AUTO} for i in infos}


class InputVStreamParams(_VStreamParams):
    @staticmethod
    def make(configured_network, quantized=None, format_type=None, timeout_ms=None, queue_size=None, network_name=None):
        return _VStreamParams.make(configured_network, quantized, format_type, direction="input")


class OutputVStreamParams(_VStreamParams):
    @staticmethod
    def make(configured_network, quantized=None, format_type=None, timeout_ms=None, queue_size=None, network_name=None):
        return _VStreamParams.make(configured_network, quantized, format_type, direction="output")


class InferVStreams:
    """`with InferVStreams(ng, ivp, ovp) as pipe: pipe.infer({name: batch})` -> {output name: batch}."""

    def __init__(self, configured_network: ConfiguredNetwork, input_params: dict, output_params: dict):
        self._ng = configured_network
        self._model = configured_network.model
        self._in_float = input_params[self._model.input_info.name]["format_type"] == FormatType.FLOAT32
        self._out_float = output_params[self._model.output_info.name]["format_type"] == FormatType.FLOAT32

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def infer(self, input_data) -> dict[str, np.ndarray]:
        name = self._model.input_info.name
        if isinstance(input_data, dict):
            if set(input_data) != {name}:
                raise HailoRTException(f"input names {sorted(input_data)} do not match the model's [{name!r}]")
            input_data = input_data[name]
        m = self._model
        raw_in = m.quantize_input(m._check(input_data, m.input_info)) if self._in_float else input_data
        raw_out = m.run_raw(raw_in)
        out = m.dequantize_output(raw_out) if self._out_float else raw_out
        return {m.output_info.name: out}
