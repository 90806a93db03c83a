"""Deploy: open a compiled model and run it, through an API shaped after HailoRT's Python API
(`hailo_platform`), so that code written for a Hailo device ports with small changes.

Queries work on the emulator's compiled files and on real Hailo HEFs (`runtime.hef`):

    hef = HEF("models/mnist.hef")                   # a path or the file's bytes
    info = hef.get_input_vstream_infos()[0]         # .name, .shape (no batch), .format.type/.order, .quant_info

Legacy flow (`runtime.vdevice`) (HailoRT's InferVStreams tutorial), whole batches keyed by stream name:

    with VDevice() as target:
        network_group = target.configure(hef)[0]
        ivp = InputVStreamParams.make(network_group, format_type=FormatType.FLOAT32)
        ovp = OutputVStreamParams.make(network_group, format_type=FormatType.FLOAT32)
        with InferVStreams(network_group, ivp, ovp) as pipeline, network_group.activate():
            out = pipeline.infer({info.name: images_nhwc})      # or pipeline.infer(images_nhwc)

InferModel flow (`runtime.infer_model`, HailoRT's async tutorial), one frame per Bindings, a list of them per run:

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

The emulated device has an architecture (`VDevice(device_arch="hailo8l", hailort_version="4.20")`,
default hailo8 and the newest HailoRT for it) and refuses a HEF compiled for a device it is not, with
HailoRT's message and status (`formats.compatibility`; `hailopipe check` prints the same verdict).
"""

from hailopipe.formats.streams import Format, FormatOrder, FormatType, QuantInfo, VStreamInfo
from hailopipe.runtime.hef import (
                                   HEF,
                                   HailoRTException,
                                   HailoRTHEFNotCompatibleWithDevice,
                                   HailoRTInvalidHEFException,
                                   RealHefError,
)
from hailopipe.runtime.infer_model import AsyncInferJob, Bindings, ConfiguredInferModel, InferModel, InferStream
from hailopipe.runtime.vdevice import (
                                       ConfiguredNetwork,
                                       ConfigureParams,
                                       HailoSchedulingAlgorithm,
                                       HailoStreamInterface,
                                       InferVStreams,
                                       InputVStreamParams,
                                       OutputVStreamParams,
                                       VDevice,
                                       VDeviceParams,
)

__all__ = ["HEF", "Format", "FormatOrder", "FormatType", "HailoRTException", "HailoRTInvalidHEFException",
           "HailoRTHEFNotCompatibleWithDevice", "HailoSchedulingAlgorithm",
           "HailoStreamInterface", "InferStream", "QuantInfo", "RealHefError", "VStreamInfo", "InferModel", "Bindings",
           "ConfiguredInferModel", "AsyncInferJob", "VDevice", "VDeviceParams", "ConfiguredNetwork",
           "ConfigureParams", "InputVStreamParams", "OutputVStreamParams", "InferVStreams"]
