"""Test stand-in for Hailo's Dataflow Compiler package (see tests/fake_hailo/fake_hailo_common.py).

Never a backend: it lives in tests/ and is only importable when a test puts tests/fake_hailo on
the path.  It records every call and refuses what the real DFC would refuse.
"""

from fake_hailo_common import DFC_VERSION as __version__

from hailo_sdk_client.exposed_definitions import InferenceContext, States
from hailo_sdk_client.runner.client_runner import ClientRunner

__all__ = ["ClientRunner", "InferenceContext", "States", "__version__"]
