"""HailoRT's InferModel flow: `InferModel` (made by `VDevice.create_infer_model` or directly), its
`InferStream`s, `ConfiguredInferModel` and the per-frame `Bindings`; see `hailopipe.runtime`.

A stream's native format type is UINT8 (UINT16 for a 16-bit edge); AUTO means native.  FLOAT32
streams convert on the host as HailoRT does (`arithmetic.quantize` with the stream's limvals,
`arithmetic.dequantize`); raw streams pass the integers to `engine.Engine`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np

from hailopipe.engine import Engine
from hailopipe.formats.streams import Format, FormatOrder, FormatType, VStreamInfo
from hailopipe.quantization import arithmetic
from hailopipe.runtime.hef import HEF, HailoRTException


def pick_stream(streams: dict, name: str, kind: str):
    """HailoRT's `input(name="")` / `output(name="")`: the only stream, or the one named."""
    if not name and len(streams) == 1:
        return next(iter(streams.values()))
    if name not in streams:
        raise HailoRTException(f"no {kind} stream named {name!r} (has {', '.join(streams)}): give one of them")
    return streams[name]


class InferStream:
    """A stream of an InferModel (HailoRT's InferModel.InferStream): its info and the format the
    user's buffers will have."""

    def __init__(self, info: VStreamInfo):
        self.info = info
        self._type = info.format.type

    name = property(lambda self: self.info.name)
    shape = property(lambda self: self.info.shape)
    quant_infos = property(lambda self: [self.info.quant_info])
    is_nms = property(lambda self: self.info.format.order.is_nms)
    format = property(lambda self: Format(self._type, self.info.format.order))
    dtype = property(lambda self: self._type.dtype)

    def set_format_type(self, type: FormatType) -> None:
        native = self.info.format.type
        t = native if type in (FormatType.AUTO, None) else type
        if t not in (native, FormatType.FLOAT32):
            raise HailoRTException(f"stream {self.name}: format type {getattr(t, 'name', t)} is not offered "
                                   f"(native {native.name} or FLOAT32)")
        self._type = t

    def set_format_order(self, order: FormatOrder) -> None:
        if order not in (FormatOrder.AUTO, self.info.format.order):
            raise HailoRTException(f"stream {self.name}: order {getattr(order, 'name', order)} is not offered "
                                   f"(the emulator gives the native {self.info.format.order.name})")

    def batch(self, x) -> np.ndarray:
        """Check and convert user data for this input stream: [N, *shape] (or one frame, *shape)."""
        x = np.asarray(x)
        if x.ndim == len(self.shape):
            x = x[None]
        if x.shape[1:] != self.shape:
            raise HailoRTException(f"input {self.name}: shape {list(x.shape)}, expected [batch, "
                                   f"{', '.join(map(str, self.shape))}]")
        if self._type != FormatType.FLOAT32:
            if x.dtype != self.dtype:
                raise HailoRTException(f"input {self.name}: dtype {x.dtype}, the raw {self._type.name} "
                                       f"stream needs {self.dtype.name}")
            return x
        if x.dtype.kind not in "fiu":
            raise HailoRTException(f"input {self.name}: dtype {x.dtype} is not numeric")
        return x.astype(np.float32, copy=False)


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
        """float32 input (raw pixels 0-255 when the model script normalizes) -> the raw stream integers,
        HailoRT's input conversion with the input vstream's qparams."""
        x = np.asarray(x, np.float32)
        if np.isnan(x).any():
            raise HailoRTException(f"input {self.input_info.name}: contains NaN")
        q, bits = self.input_info.quant_info, self._in_bits
        zero_point = int(q.qp_zp) + arithmetic.qrange(bits)[0]  # the stream's unsigned zero point, signed
        signed = arithmetic.quantize(x, q.qp_scale, zero_point, bits, limvals=(q.limvals_min, q.limvals_max))
        return arithmetic.to_unsigned(signed, bits)

    def dequantize_output(self, u: np.ndarray) -> np.ndarray:
        q = self.output_info.quant_info
        return arithmetic.dequantize(u, q.qp_scale, q.qp_zp)

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
