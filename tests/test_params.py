"""params.yaml validation in the stage layer: a bad value names the key and what is wrong."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from hailopipe.errors import PipelineError
from stages import calibration, params, shared
from stages.optimize import config


def load(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return params.load(str(p))


def test_repo_params_are_valid():
    p = params.load("params.yaml")
    assert shared.backend_name(p) == "emulator"
    assert p.int_list("train.hidden") and p.int("calibration.size", 1, 10000) == 2000


@pytest.mark.parametrize("text,call,words", [
    ("calibration: {size: 0}", lambda p: p.int("calibration.size", 1, 10000), "calibration.size must be between 1 and 10000, got 0"),
    ("calibration: {size: 20000}", lambda p: p.int("calibration.size", 1, 10000), "got 20000"),
    ("calibration: {size: many}", lambda p: p.int("calibration.size", 1), "must be an integer"),
    ("train: {hidden: [128, 0]}", lambda p: p.int_list("train.hidden"), "train.hidden[1] must be an integer >= 1, got 0"),
    ("train: {hidden: []}", lambda p: p.int_list("train.hidden"), "at least 1"),
    ("backend: tpu", lambda p: shared.backend_name(p), "backend must be one of emulator, hailo, got 'tpu'"),
    ("hw_arch: hailo9", lambda p: p.hw_arch(), "hw_arch must be one of"),
    ("optimize: {activation_clipping: {clipping_values: [1, 0]}}",
     lambda p: p.float_pair("optimize.activation_clipping.clipping_values"), "low < high"),
    ("train: {}", lambda p: p.int("train.epochs"), "missing parameter train.epochs"),
])
def test_bad_values(tmp_path, text, call, words):
    with pytest.raises(PipelineError) as err:
        call(load(tmp_path, text))
    assert words in str(err.value) and "params.yaml" in str(err.value)


def test_not_yaml(tmp_path):
    with pytest.raises(PipelineError, match="not valid YAML"):
        load(tmp_path, "a: [1, 2")


def repo_params(tmp_path, **sections):
    """params.yaml of the repo with some keys replaced (`section={key: value}`, nested as dotted keys)."""
    data = yaml.safe_load(Path("params.yaml").read_text())
    for section, values in sections.items():
        for key, value in values.items():
            node = data[section]
            *path, last = key.split(".")
            for part in path:
                node = node[part]
            node[last] = value
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return params.load(str(p))


LAYERS, MODES = ["fc1", "fc2", "fc3"], ("a8_w8", "a16_w16")


@pytest.mark.parametrize("change,words", [
    ({"precision": {"fc9": "a16_w16"}}, "optimize.precision names unknown layer(s) ['fc9']; layers are"),
    ({"precision": {"fc1": "a4_w4"}}, "optimize.precision.fc1 must be a precision mode, one of a8_w8, a16_w16"),
    ({"optimization_level": 3}, "optimize.optimization_level must be between 0 and 2, got 3"),
    ({"activation_clipping.mode": "kl"}, "optimize.activation_clipping.mode must be one of minmax, percentile, mse"),
    ({"activation_clipping.clipping_values": [5.0, 101.0]}, "clipping_values must be [low, high] percentiles"),
    ({"weights": "per_row"}, "optimize.weights must be one of per_channel, per_tensor"),
    ({"normalization.std": [0.0]}, "optimize.normalization.std[0] must be > 0, got 0.0"),
    ({"normalization.std": []}, "optimize.normalization.std must be a non-empty list of numbers"),
    ({"normalization.mean": ["a"]}, "optimize.normalization.mean[0] must be a finite number, got 'a'"),
    ({"normalization.mean": [0.0, 1.0]}, "optimize.normalization must give as many std values as mean values"),
])
def test_optimize_params_are_checked_in_the_stage(tmp_path, change, words):
    p = repo_params(tmp_path, optimize=change)
    with pytest.raises(PipelineError) as err:
        config(p, 100, LAYERS, MODES)
    assert words in str(err.value) and str(err.value).startswith(f"{p.path}: ")


def test_repo_optimize_params_make_a_config(tmp_path):
    cfg = config(params.load("params.yaml"), 2000, LAYERS, MODES)
    assert cfg.optimization_level == 2 and cfg.calib_size == 2000 and cfg.precision == {}
    assert cfg.normalization == ((0.0,), (255.0,))  # raw pixels in, the model's pixels / 255 inside


@pytest.mark.parametrize("change,words", [
    ({"size": 0}, "calibration.size must be between 1 and 1000, got 0"),
    ({"size": 1001}, "calibration.size must be between 1 and 1000, got 1001"),
    ({"size": 10, "selection": "last"}, "calibration.selection must be one of first, random, got 'last'"),
])
def test_calibration_params(tmp_path, change, words):
    p = repo_params(tmp_path, calibration=change)
    with pytest.raises(PipelineError) as err:
        calibration.images(p, np.zeros((1000, 28, 28), np.uint8))
    assert words in str(err.value) and "params.yaml" in str(err.value)


def test_calibration_size_from_the_command_line(tmp_path):
    p = repo_params(tmp_path)
    p.override("calibration.size", "64")
    x = calibration.images(p, np.arange(1000 * 784, dtype=np.uint32).astype(np.uint8).reshape(1000, 28, 28))
    assert x.shape == (64, 28, 28, 1) and x.dtype == np.float32

