"""Test stand-in for Hailo's Dataflow Compiler package (see tests/fake_hailo/fake_hailo_common.py).

Never a backend: it lives in tests/ and is only importable when a test puts tests/fake_hailo on
the path.  It records every call and refuses what the real DFC would refuse.

Like the real DFC's `hailo_model_optimization/__init__.py` (as public runbooks quote it), importing
it picks the GPU unless CUDA_VISIBLE_DEVICES is already set: "0" when there is one
($FAKE_HAILO_GPU=1), else "99" (no device), logging "No GPU chosen, Selected GPU 0" or
"No GPU chosen and no suitable GPU found, falling back to CPU."
"""

import logging
import os

import fake_hailo_common as _common
from fake_hailo_common import DFC_VERSION as __version__

from hailo_sdk_client.exposed_definitions import InferenceContext, States
from hailo_sdk_client.runner.client_runner import ClientRunner

if "CUDA_VISIBLE_DEVICES" not in os.environ:
    os.environ["CUDA_VISIBLE_DEVICES"] = "0" if _common.HAS_GPU else "99"
    logging.getLogger("hailo_sdk.client").info(
        "No GPU chosen, Selected GPU 0" if _common.HAS_GPU else
        "No GPU chosen and no suitable GPU found, falling back to CPU.")

__all__ = ["ClientRunner", "InferenceContext", "States", "__version__"]
