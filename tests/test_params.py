"""params.yaml validation: a bad value names the key and what is wrong."""

import pytest

from hailopipe import params
from hailopipe.errors import PipelineError


def load(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return params.load(str(p))


def test_repo_params_are_valid():
    p = params.load("params.yaml")
    assert p.backend() == "emulator"
    assert p.int_list("train.hidden") and p.int("calibration.size", 1, 10000) == 2000


@pytest.mark.parametrize("text,call,words", [
    ("calibration: {size: 0}", lambda p: p.int("calibration.size", 1, 10000), "calibration.size must be between 1 and 10000, got 0"),
    ("calibration: {size: 20000}", lambda p: p.int("calibration.size", 1, 10000), "got 20000"),
    ("calibration: {size: many}", lambda p: p.int("calibration.size", 1), "must be an integer"),
    ("train: {hidden: [128, 0]}", lambda p: p.int_list("train.hidden"), "train.hidden[1] must be an integer >= 1, got 0"),
    ("train: {hidden: []}", lambda p: p.int_list("train.hidden"), "at least 1"),
    ("backend: tpu", lambda p: p.backend(), "backend must be one of emulator, hailo, got 'tpu'"),
    ("hw_arch: hailo9", lambda p: p.hw_arch(), "hw_arch must be one of"),
    ("optimize: {input_range: [1, 0]}", lambda p: p.float_pair("optimize.input_range"), "low < high"),
    ("train: {}", lambda p: p.int("train.epochs"), "missing parameter train.epochs"),
])
def test_bad_values(tmp_path, text, call, words):
    with pytest.raises(PipelineError) as err:
        call(load(tmp_path, text))
    assert words in str(err.value) and "params.yaml" in str(err.value)


def test_not_yaml(tmp_path):
    with pytest.raises(PipelineError, match="not valid YAML"):
        load(tmp_path, "a: [1, 2")
