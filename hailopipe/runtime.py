"""Deploy: open a compiled model and run it, through an API shaped after HailoRT's Python API
(`hailo_platform`, reference §4), so that code written for a Hailo device ports with small changes.

Queries work on the emulator's compiled files and on real Hailo HEFs (decoded by `hailo_hef`):

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
import enum
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hailopipe import hailo_hef, quant
from hailopipe import hef as hef_format
from hailopipe.engine import Engine
from hailopipe.errors import PipelineError


class HailoRTException(PipelineError):
    """Bad input to the runtime API (wrong shape, dtype, stream name, format, file)."""


class FormatType(enum.Enum):
    AUTO = 0
    UINT8 = 1
    UINT16 = 2
    FLOAT32 = 3


class FormatOrder(enum.Enum):
    """hailo_format_order_t (the ones a vstream reports)."""
    AUTO = 0
    NHWC = 1
    NHCW = 2
    FCR = 3
    F8CR = 4
    NHW = 5
    NC = 6
    BAYER_RGB = 7
    HAILO_NMS = 9
    RGB888 = 10
    NCHW = 11
    YUY2 = 12
    NV12 = 13
    NV21 = 14
    I420 = 18
    HAILO_NMS_BY_CLASS = 22


class HailoStreamInterface(enum.Enum):
    PCIe = 0
    INTEGRATED = 1
    ETH = 2
    MIPI = 3


class HailoSchedulingAlgorithm(enum.Enum):
    NONE = 0
    ROUND_ROBIN = 1


_DTYPES = {FormatType.UINT8: np.dtype(np.uint8), FormatType.UINT16: np.dtype(np.uint16),
           FormatType.FLOAT32: np.dtype(np.float32)}


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


def _vstream(s: hailo_hef.StreamInfo) -> VStreamInfo:
    q = s.quant_info
    ftype = FormatType.__members__.get(s.format_type, FormatType.AUTO)
    order = FormatOrder.__members__.get(s.order.replace(" ", "_"), FormatOrder.AUTO)
    return VStreamInfo(s.name, s.network_name, s.direction, Format(ftype, order), tuple(s.shape),
                       QuantInfo(q.qp_zp, q.qp_scale, q.limvals_min, q.limvals_max))


def _emulated_info(model: hef_format.CompiledModel, digest: str) -> hailo_hef.HailoHefInfo:
    """The emulator's compiled file described with the same records as a real HEF."""
    meta, net = model.meta, model.meta["networks"][0]

    def streams(specs, direction):
        return [hailo_hef.StreamInfo(s["name"], direction, s["format_type"], s["order"], tuple(s["shape"]),
                                     hailo_hef.QuantInfo(float(s["qp_zp"]), s["qp_scale"], s["limvals_min"],
                                                         s["limvals_max"]), net) for s in specs]

    outputs = streams(meta["outputs"], "output")
    group = hailo_hef.NetworkGroupInfo(meta["network_group"], int(meta["contexts"]), list(meta["networks"]),
                                       streams(meta["inputs"], "input"), outputs, [o.name for o in outputs])
    return hailo_hef.HailoHefInfo(model.path, hef_format.VERSION, f"sha256 {digest} (verified)",
                                  meta["hw_arch"].upper(), meta["compiler"], [group])


def _read_real_hef(buf: bytes, label: str) -> hailo_hef.HailoHefInfo:
    """hailo_hef reads files only: bytes of a real HEF go through a private temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.hef"
        path.write_bytes(buf)
        try:
            info = hailo_hef.read_hailo_hef(path)
        except hailo_hef.HefFormatError as exc:
            raise hailo_hef.HefFormatError(str(exc).replace(str(path), label)) from None
    info.path = label
    return info


class HEF:
    """A compiled model (path or bytes) with HailoRT's query methods.  `emulated` tells the
    emulator's files (which run here) from real Hailo HEFs (described only)."""

    def __init__(self, source: str | os.PathLike | bytes):
        if isinstance(source, (bytes, bytearray)):
            self.path, buf = None, bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            self.path = os.fspath(source)
            if os.path.exists(self.path) and not (os.path.isfile(self.path) or os.path.isdir(self.path)):
                raise HailoRTException(f"{self.path}: not a regular file")  # a FIFO would block the read
            buf = hef_format.read_bytes(source)
        else:
            raise HailoRTException(f"HEF: expected a file path or bytes, got {type(source).__name__}")
        label = self.path or "<bytes>"
        if hailo_hef.is_hailo_hef(buf[:4]):
            self.compiled = None
            self.info = hailo_hef.read_hailo_hef(self.path) if self.path else _read_real_hef(buf, label)
        else:
            self.compiled = hef_format.load(buf, name=label)
            self.info = _emulated_info(self.compiled, hef_format.HEADER.unpack_from(buf)[4].hex())

    @property
    def emulated(self) -> bool:
        return self.compiled is not None

    @property
    def hw_arch(self) -> str:
        """The target as the file records it (`hailo8` for the emulator's, `HAILO8P` for a real HEF)."""
        return self.compiled.meta["hw_arch"] if self.compiled else self.info.hw_arch

    @property
    def qnet(self):
        if self.compiled is None:
            raise hef_format.RealHefError(
                f"{self.path or '<bytes>'}: is a real Hailo HEF (for {', '.join(self.info.compatible_archs)}): running it "
                "needs a Hailo device and HailoRT (hailo_platform); `hailopipe parse-hef` can describe it")
        return self.compiled.qnet

    def _group(self, name: str | None) -> hailo_hef.NetworkGroupInfo:
        for g in self.info.network_groups:
            if name in (None, g.name):
                return g
        raise HailoRTException(f"{self.path or '<bytes>'}: no network group named {name!r} "
                               f"(has {', '.join(g.name for g in self.info.network_groups)})")

    def _vstreams(self, direction: str, name: str | None) -> list[VStreamInfo]:
        """Streams of the first group (name None), of a group, or of one network."""
        for g in self.info.network_groups:
            if name in g.networks:
                streams = [s for s in g.inputs + g.outputs if s.network_name == name]
                break
        else:
            g = self._group(name)
            streams = g.inputs + g.outputs
        return [_vstream(s) for s in streams if s.direction == direction]

    def get_network_group_names(self) -> list[str]:
        return [g.name for g in self.info.network_groups]

    def get_networks_names(self, network_group_name: str | None = None) -> list[str]:
        return list(self._group(network_group_name).networks)

    def get_input_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return self._vstreams("input", name)

    def get_output_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return self._vstreams("output", name)

    def get_all_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return self.get_input_vstream_infos(name) + self.get_output_vstream_infos(name)

    def get_sorted_output_names(self, network_group_name: str | None = None) -> list[str]:
        g = self._group(network_group_name)
        return list(g.sorted_outputs) or [s.name for s in g.outputs]


def _pick(streams: dict, name: str, kind: str):
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
    is_nms = property(lambda self: self.info.format.order in (FormatOrder.HAILO_NMS, FormatOrder.HAILO_NMS_BY_CLASS))
    format = property(lambda self: Format(self._type, self.info.format.order))
    dtype = property(lambda self: _DTYPES[self._type])

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
        self._out_bits = self.hef.qnet.output.out_bits
        self.batch_size = 1

    input_names = property(lambda self: list(self._inputs))
    output_names = property(lambda self: list(self._outputs))
    inputs = property(lambda self: list(self._inputs.values()))
    outputs = property(lambda self: list(self._outputs.values()))

    def input(self, name: str = "") -> InferStream:
        return _pick(self._inputs, name, "input")

    def output(self, name: str = "") -> InferStream:
        return _pick(self._outputs, name, "output")

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
        return _pick(self._inputs, name, "input")

    def output(self, name: str = "") -> BufferStream:
        return _pick(self._outputs, name, "output")


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
