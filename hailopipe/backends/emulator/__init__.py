"""The emulator backend: Hailo's parse / optimize / compile steps, and the SDK's emulation and
runtime, done by this project's code; one module per step (see `hailopipe.backends`)."""
