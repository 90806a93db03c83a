"""hailopipe: a reproducible MNIST -> int8 accelerator pipeline following Hailo's workflow.

build (Keras) -> parse (HAR) -> optimize (int8) -> compile (HEF step) -> deploy (runtime, CLI).
The default backend is an open emulator of Hailo's toolchain; `backend: hailo` in params.yaml
uses the real SDK when it is installed.  See README.md.
"""

__version__ = "0.1.0"
EMULATOR = f"hailopipe-emulator {__version__}"  # how the HARs and compiled files it writes name it
