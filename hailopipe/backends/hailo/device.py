"""The compiled HEF on a Hailo device through HailoRT (`hailo_platform`), FLOAT32 in and out.

Which flow, by HailoRT major (hailort `bindings/python/.../pyhailort.py`, branches `hailo8` = 4.x
and `master` = 5.x):

- 4.x (Hailo-8 family): the InferVStreams flow of Hailo's HRT_2 tutorial (VDevice, HEF,
  ConfigureParams, FLOAT32 vstream params, `InferVStreams.infer` on the whole batch).  Without
  `network_group.activate()`: `VDevice()` is created with HailoRT's default params, whose
  scheduler is ROUND_ROBIN (`HailoRTDefaults::get_vdevice_params`, both branches), and with the
  scheduler on, `activate()` only logs "Calls to `activate()` when working with scheduler are
  deprecated! On future versions this call will raise an error." and does nothing.
- 5.x (Hailo-10/12/15): the InferModel flow (HRT_0 tutorial: `create_infer_model`, FLOAT32
  streams, `configure()`, one Bindings per frame, `run` in chunks of `get_async_queue_size()`).
  HailoRT 5.x does not implement `configure()` for a Hailo-10H (`VDeviceHrpcClient::configure`
  returns HAILO_NOT_IMPLEMENTED: "use InferModel instead"), and master dropped the InferVStreams
  tutorial.

Inputs are raw pixels 0-255 (the model script normalizes); the HEF's input vstream takes them with
identity quantization, as the Hailo-8 MNIST HEF does.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from hailopipe.backends.hailo import sdk as hailo_sdk
from hailopipe.errors import PipelineError

log = logging.getLogger(__name__)
TIMEOUT_MS = 10_000


def run(hef_path, raw: np.ndarray, hef_info) -> np.ndarray:
    """float32 logits [N, F] of the HEF on the first Hailo device, for `raw` (checked by the caller)."""
    hp = hailo_sdk.load_hailort()
    version = hailo_sdk.installed_version(hp, "hailort")
    if hef_info is not None:  # check the HailoRT major against the family the HEF was built for
        family = "hailo8" if any(a.startswith("HAILO8") for a in hef_info.compatible_archs) else "hailo10h"
        hailo_sdk.check_versions(family, hailort=version, where=f"{hef_path}: a HEF for {hef_info.hw_arch}")
    with hailo_sdk.sdk_call("HailoRT: Device.scan failed"):
        devices = hp.Device.scan()
    if not devices:
        raise PipelineError(f"{hef_path}: no Hailo device was found (hailo_platform.Device.scan() is "
                            "empty); running the HEF needs a Hailo device with its driver loaded")
    flow = _infer_model if hailo_sdk.major(version) == 5 else _infer_vstreams
    with hailo_sdk.sdk_call(f"{hef_path}: HailoRT inference failed"):
        start = time.perf_counter()
        out = flow(hp, str(hef_path), raw)
        seconds = time.perf_counter() - start
    log.info("infer_compiled: %d images on %s in %.3f s (%.0f frames/s, HailoRT %s, %s)", len(raw), devices[0],
             seconds, len(raw) / max(seconds, 1e-9), version, flow.__name__.lstrip("_"))
    return np.asarray(out, np.float32).reshape(len(raw), -1)


def _infer_vstreams(hp, hef_path: str, raw: np.ndarray) -> np.ndarray:
    hef = hp.HEF(hef_path)
    in_info, out_info = hef.get_input_vstream_infos()[0], hef.get_output_vstream_infos()[0]
    _check_shape(raw, in_info.shape, in_info.name)
    with hp.VDevice() as target:
        params = hp.ConfigureParams.create_from_hef(hef=hef, interface=hp.HailoStreamInterface.PCIe)
        network_group = target.configure(hef, params)[0]
        ivp = hp.InputVStreamParams.make(network_group, format_type=hp.FormatType.FLOAT32)
        ovp = hp.OutputVStreamParams.make(network_group, format_type=hp.FormatType.FLOAT32)
        with hp.InferVStreams(network_group, ivp, ovp) as pipeline:
            return pipeline.infer({in_info.name: raw})[out_info.name]


def _infer_model(hp, hef_path: str, raw: np.ndarray) -> np.ndarray:
    with hp.VDevice() as vdevice:
        model = vdevice.create_infer_model(hef_path)
        model.input().set_format_type(hp.FormatType.FLOAT32)
        model.output().set_format_type(hp.FormatType.FLOAT32)
        _check_shape(raw, model.input().shape, model.input().name)
        out = np.empty((len(raw), *model.output().shape), np.float32)
        with model.configure() as configured:
            chunk = max(1, int(configured.get_async_queue_size()))
            for start in range(0, len(raw), chunk):
                bindings = [configured.create_bindings(input_buffers={model.input().name: raw[i]},
                                                       output_buffers={model.output().name: out[i]})
                            for i in range(start, min(start + chunk, len(raw)))]
                configured.run(bindings, TIMEOUT_MS)
        return out


def _check_shape(raw: np.ndarray, shape, name: str) -> None:
    if tuple(raw.shape[1:]) != tuple(shape):
        raise PipelineError(f"input {name}: images are {list(raw.shape[1:])}, the HEF's input takes {list(shape)}")
