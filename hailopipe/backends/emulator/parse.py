"""The emulator's parse step: `translate_tf_model` + `save_har`."""

from __future__ import annotations

from hailopipe.formats import har, tflite


def parse(tflite_path, har_path, net_name: str, hw_arch: str) -> dict:
    """Translate the TFLite model into a HAR in state hailo_model."""
    net = tflite.read(tflite_path, net_name)
    har.save(har.Har("hailo_model", net, metadata={"hw_arch": hw_arch, "source": str(tflite_path)}), har_path)
    return net.summary()
