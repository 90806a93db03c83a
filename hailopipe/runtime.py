"""Deploy: open a compiled model and run it, through an API shaped after HailoRT's Python API
(`hailo_platform`, reference §4), so that code written for a Hailo device ports with small changes.

Queries work on the emulator's compiled files and on real Hailo HEFs (`HEF` and the stream infos
live in `hailopipe.streams`, re-exported here):

    hef = HEF("models/mnist.hef")                   # a path or the file's bytes
    info = hef.get_input_vstream_infos()[0]         # .name, .shape (no batch), .format.type/.order, .quant_info

Legacy flow (HailoRT's InferVStreams tutorial), whole batches keyed by stream name:

    with VDevice() as target:
        network_group = target.configure(hef)[0]
        ivp = InputVStreamParams.make(network_group, format_type=FormatType.FLOAT32)
        ovp = OutputVStreamParams.make(network_group, format_type=FormatType.FLOAT32)
        with InferVStreams(network_group, ivp, ovp) as pipeline, network_group.activate():
            out = pipeline.infer({info.name: images_nhwc})      # or pipeline.infer(images_nhwc)

InferModel flow (HailoRT's async tutorial), one frame per Bindings, a list of them per run:

    with VDevice() as vdevice:
        im = vdevice.create_infer_model("models/mnist.hef")
        im.input().set_format_type(FormatType.FLOAT32)
        im.output().set_format_type(FormatType.FLOAT32)
        with im.configure() as cim:
            b = cim.create_bindings()
            b.input().set_buffer(image_hwc_float32)
            b.output().set_buffer(np.empty(im.output().shape, np.float32))
            cim.run([b], 1000)
            logits = b.output().get_buffer()

A stream's native format type is UINT8 (UINT16 for a 16-bit edge); AUTO means native.  FLOAT32
streams convert on the host as HailoRT does: input q = round_half_even(clip(x, limvals)/qp_scale +
qp_zp), output x = (q - qp_zp) * qp_scale; raw streams pass the integers.  Between the edges only
the integer engine runs, so both formats and both flows give the same bits.

Differences from HailoRT: the emulator runs synchronously (run_async has finished when it returns;
timeouts never fire); a stream is offered in its native order only; a real HEF opens for queries,
but configure / create_infer_model raise RealHefError: running it needs a Hailo device and HailoRT.
Emulator extras, not in HailoRT: `InferModel(hef).run_float(x)` / `.run_raw(u)` on whole batches.
Wrong stream names, shapes, dtypes or formats raise HailoRTException (a PipelineError).
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field

import numpy as np

from hailopipe import quant
from hailopipe.engine import Engine
from hailopipe.streams import (HEF, Format, FormatOrder, FormatType, HailoRTException, HailoSchedulingAlgorithm,
                               HailoStreamInterface, InferStream, QuantInfo, VStreamInfo, pick_stream)

__all__ = ["HEF", "Format", "FormatOrder", "FormatType", "HailoRTException", "HailoSchedulingAlgorithm",
           "HailoStreamInterface", "InferStream", "QuantInfo", "VStreamInfo", "InferModel", "Bindings",
           "ConfiguredInferModel", "AsyncInferJob", "VDevice", "VDeviceParams", "ConfiguredNetwork",
           "ConfigureParams", "InputVStreamParams", "OutputVStreamParams", "InferVStreams"]


class InferModel:
    """A compiled model ready to configure (HailoRT's InferModel), made by `VDevice.create_infer_model`
    or directly as `InferModel(hef)` (a HEF, a path or bytes)."""

    InferStream = InferStream

    def __init__(self, hef: HEF | str | os.PathLike | bytes, name: str = ""):
        self.hef = hef if isinstance(hef, HEF) else HEF(hef)
        self.engine = Engine(self.hef.qnet)
        self._inputs = {i.name: InferStream(i) for i in self.hef.get_input_vstream_infos()}
        self._outputs = {o.name: InferStream(o) for o in self.hef.get_output_vstream_infos()}
        self.input_info = self.hef.get_input_vstream_infos()[0]
        self.output_info = self.hef.get_output_vstream_infos()[0]
        self._in_bits = self.hef.qnet.input_bits
        self._out_bits = self.hef.qnet.output.out_bits
        self.batch_size = 1

    input_names = property(lambda self: list(self._inputs))
    output_names = property(lambda self: list(self._outputs))
    inputs = property(lambda self: list(self._inputs.values()))
    outputs = property(lambda self: list(self._outputs.values()))

    def input(self, name: str = "") -> InferStream:
        return pick_stream(self._inputs, name, "input")

    def output(self, name: str = "") -> InferStream:
        return pick_stream(self._outputs, name, "output")

    def set_batch_size(self, batch_size: int) -> None:
        if int(batch_size) < 1:
            raise HailoRTException(f"batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    def configure(self) -> "ConfiguredInferModel":
        return ConfiguredInferModel(self)

    # --- the computation, shared by both flows ---------------------------------------------------

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """float32 model-domain input -> the raw stream integers, HailoRT's input conversion."""
        x = np.asarray(x, np.float32)
        if np.isnan(x).any():
            raise HailoRTException(f"input {self.input_info.name}: contains NaN")
        q = self.input_info.quant_info
        xs = np.clip(x, np.float32(q.limvals_min), np.float32(q.limvals_max))
        u = np.rint(xs.astype(np.float64) / q.qp_scale + q.qp_zp)
        return np.clip(u, 0, (1 << self._in_bits) - 1).astype(np.uint8 if self._in_bits <= 8 else np.uint16)

    def dequantize_output(self, u: np.ndarray) -> np.ndarray:
        q = self.output_info.quant_info
        return quant.dequantize(u, q.qp_scale, q.qp_zp)

    def _run(self, x: np.ndarray, in_type: FormatType, out_type: FormatType) -> np.ndarray:
        """A checked input batch in `in_type` -> the output batch in `out_type`."""
        raw = self.quantize_input(x) if in_type == FormatType.FLOAT32 else x
        u = self.engine.run_stream(raw)
        return self.dequantize_output(u) if out_type == FormatType.FLOAT32 else u

    def run_raw(self, u: np.ndarray) -> np.ndarray:
        """Raw stream integers in (uint8/uint16 [N, H, W, C]) -> raw integers out ([N, F])."""
        stream = InferStream(self.input_info)
        return self._run(stream.batch(u), stream.format.type, self.output_info.format.type)

    def run_float(self, x: np.ndarray) -> np.ndarray:
        """float input [N, H, W, C] (or one image) -> dequantized float32 outputs [N, F]."""
        stream = InferStream(self.input_info)
        stream.set_format_type(FormatType.FLOAT32)
        return self._run(stream.batch(x), FormatType.FLOAT32, FormatType.FLOAT32)


class BufferStream:
    """One input or output of a Bindings: the user's buffer for one frame."""

    def __init__(self, stream: InferStream, direction: str):
        self.name, self.shape, self.dtype = stream.name, stream.shape, stream.dtype
        self.direction = direction
        self._buffer = None

    def set_buffer(self, buffer: np.ndarray) -> None:
        if not isinstance(buffer, np.ndarray):
            raise HailoRTException(f"{self.direction} {self.name}: buffer must be a numpy array, "
                                   f"got {type(buffer).__name__}")
        if buffer.dtype != self.dtype or buffer.shape != tuple(self.shape):
            raise HailoRTException(f"{self.direction} {self.name}: buffer is {buffer.dtype} {list(buffer.shape)}, "
                                   f"the stream needs {self.dtype.name} {list(self.shape)}")
        if not buffer.flags.c_contiguous:
            raise HailoRTException(f"{self.direction} {self.name}: buffer must be C_CONTIGUOUS")
        if self.direction == "output" and not buffer.flags.writeable:
            raise HailoRTException(f"output {self.name}: buffer is read-only")
        self._buffer = buffer

    def get_buffer(self, tf_format: bool = False) -> np.ndarray | None:
        return self._buffer


class Bindings:
    """One frame's input and output buffers (HailoRT's ConfiguredInferModel.Bindings)."""

    InferStream = BufferStream

    def __init__(self, inputs: list[InferStream], outputs: list[InferStream]):
        self._inputs = {s.name: BufferStream(s, "input") for s in inputs}
        self._outputs = {s.name: BufferStream(s, "output") for s in outputs}

    def input(self, name: str = "") -> BufferStream:
        return pick_stream(self._inputs, name, "input")

    def output(self, name: str = "") -> BufferStream:
        return pick_stream(self._outputs, name, "output")


@dataclass
class AsyncInferCompletionInfo:
    exception: Exception | None = None


class AsyncInferJob:
    def wait(self, timeout_ms: int | None = None) -> None:
        """The emulator's jobs have finished when run_async returns."""


class ConfiguredInferModel:
    """`with infer_model.configure() as cim:` create bindings and run them; the stream formats are
    fixed at configure time, as in HailoRT."""

    Bindings = Bindings

    def __init__(self, model: InferModel):
        self._model = model
        self._inputs = [copy.copy(s) for s in model.inputs]  # later set_format_type calls don't reach here
        self._outputs = [copy.copy(s) for s in model.outputs]
        self._open = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False

    def shutdown(self) -> None:
        self._open = False

    def activate(self) -> None:
        """No-op, as in HailoRT with the scheduler on (the emulator's default)."""

    deactivate = activate

    def create_bindings(self, input_buffers: dict | None = None, output_buffers: dict | None = None) -> Bindings:
        b = Bindings(self._inputs, self._outputs)
        for name, buf in (input_buffers or {}).items():
            b.input(name).set_buffer(buf)
        for name, buf in (output_buffers or {}).items():
            b.output(name).set_buffer(buf)
        return b

    def wait_for_async_ready(self, timeout_ms: int = 1000, frames_count: int = 1) -> None:
        """Always ready: run_async finishes before it returns."""

    def run(self, bindings: list[Bindings], timeout: int | None = None) -> None:
        """Infer every frame of `bindings` in one batch; outputs land in their output buffers
        (allocated if none was set)."""
        if not self._open:
            raise HailoRTException("configured infer model used after its `with` block ended")
        blist = [bindings] if isinstance(bindings, Bindings) else list(bindings)
        if not blist or not all(isinstance(b, Bindings) for b in blist):
            raise HailoRTException("run: expected a non-empty list of Bindings (from create_bindings)")
        (inp,), (outp,) = self._inputs, self._outputs
        frames = []
        for b in blist:
            buf = b.input(inp.name).get_buffer()
            if buf is None:
                raise HailoRTException(f"input {inp.name}: no buffer set (bindings.input().set_buffer)")
            frames.append(buf)
        y = self._model._run(np.stack(frames), inp.format.type, outp.format.type)
        for b, row in zip(blist, y):
            out = b.output(outp.name)
            if out.get_buffer() is None:
                out.set_buffer(np.empty(out.shape, out.dtype))
            out.get_buffer()[...] = row

    def run_async(self, bindings: list[Bindings], callback=None) -> AsyncInferJob:
        self.run(bindings)
        if callback is not None:
            callback(completion_info=AsyncInferCompletionInfo())
        return AsyncInferJob()


# --- the legacy (vstreams) flow -------------------------------------------------------------

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

    def __init__(self, params: VDeviceParams | None = None, *, device_ids=None):
        self.params = params or VDeviceParams()
        self._configured: list[ConfiguredNetwork] = []
        self._open = True

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
        ng = ConfiguredNetwork(hef)
        self._configured.append(ng)
        return [ng]

    def create_infer_model(self, hef_source: str | os.PathLike | bytes, name: str = "") -> InferModel:
        self._check_open()
        return InferModel(hef_source, name)


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
