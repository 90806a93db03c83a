"""The train stage's params: `train.arch` and the CNN's `conv`, `kernel` and `head`, checked like every
other value (one line naming params.yaml and the key), and the TrainConfig they give."""

from pathlib import Path

import pytest
import yaml

from hailopipe import model
from hailopipe.errors import PipelineError
from stages import params, train


def config_with(tmp_path, **values):
    data = yaml.safe_load(Path("params.yaml").read_text())
    data["train"].update(values)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return train.config(params.load(str(p)))


def test_the_repo_trains_the_dense_model_by_default():
    cfg = train.config(params.load("params.yaml"))
    assert cfg.arch == "dense" and cfg.hidden == (256, 128) and cfg == model.TrainConfig()
    assert (cfg.conv, cfg.kernel, cfg.head) == ((8, 16, 16), 3, ())
    assert train.describe(cfg) == "784-256-128-10"


def test_epochs_and_learning_rate_are_per_arch_or_shared(tmp_path):
    """params.yaml gives the CNN its own short, fast schedule; one number still sets both archs."""
    p = params.load("params.yaml")
    dense, cnn = train.config(p), train.config(p, "cnn")
    assert (dense.epochs, dense.learning_rate) == (10, 0.001) and (cnn.epochs, cnn.learning_rate) == (2, 0.01)
    assert config_with(tmp_path, arch="cnn").epochs == 2
    shared = config_with(tmp_path, arch="cnn", epochs=2, learning_rate=0.01)
    assert (shared.epochs, shared.learning_rate) == (2, 0.01)
    assert config_with(tmp_path, epochs={"dense": 7, "cnn": 2}).epochs == 7


def test_cnn_config(tmp_path):
    cfg = config_with(tmp_path, arch="cnn", head=[32])
    assert cfg.arch == "cnn" and cfg.conv == (8, 16, 16) and cfg.head == (32,)
    assert train.describe(cfg) == "conv 8-16-16 3x3 -> 32-10"
    assert model.cnn_blocks(cfg.conv, cfg.kernel) == [(8, "same", True), (16, "valid", True), (16, "valid", False)]


@pytest.mark.parametrize("values,words", [
    ({"arch": "resnet"}, "train.arch must be one of dense, cnn, got 'resnet'"),
    ({"conv": [8, 0]}, "train.conv[1] must be an integer between 1 and 1024, got 0"),
    ({"conv": []}, "train.conv must be a list of at least 1 integers"),
    ({"conv": "8,16"}, "train.conv must be a list"),
    ({"conv": [8, 16, 16, 16]}, "train.conv does not fit the image with train.kernel 3 (block 4 of 4"),
    ({"kernel": 0}, "train.kernel must be between 1 and 28, got 0"),
    ({"kernel": 9}, "train.conv does not fit the image with train.kernel 9"),
    ({"kernel": True}, "train.kernel must be an integer"),
    ({"head": [0]}, "train.head[0] must be an integer between 1 and 8192, got 0"),
    ({"head": None}, "train.head must be a list"),
    ({"epochs": {"dense": 10}}, "train.epochs must be a number or a mapping with one value for each of dense, cnn"),
    ({"epochs": {"dense": 10, "cnn": 3, "rnn": 1}}, "train.epochs must be a number or a mapping"),
    ({"epochs": {"dense": 10, "cnn": 0}}, "train.epochs.cnn must be between 1 and 1000, got 0"),
    ({"learning_rate": {"dense": "fast", "cnn": 0.01}}, "train.learning_rate.dense must be a number, got 'fast'"),
    ({"epochs": "ten"}, "train.epochs must be an integer, got 'ten'"),
])
def test_bad_cnn_values(tmp_path, values, words):
    with pytest.raises(PipelineError) as err:
        config_with(tmp_path, **values)
    msg = str(err.value)
    assert words in msg and msg.startswith(str(tmp_path / "params.yaml")) and "\n" not in msg, msg


def test_a_missing_cnn_key_is_named(tmp_path):
    data = yaml.safe_load(Path("params.yaml").read_text())
    del data["train"]["conv"]
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineError, match="missing parameter train.conv"):
        train.config(params.load(str(p)))


@pytest.mark.parametrize("conv,kernel,ok", [((8, 16, 16), 3, True), ((8, 16, 16), 5, True), ((8, 16, 16), 7, False),
                                            ((4,), 28, True), ((4, 4), 28, False), ((8, 8, 8), 1, True)])
def test_cnn_blocks_fit_the_image(conv, kernel, ok):
    if ok:
        assert len(model.cnn_blocks(conv, kernel)) == len(conv)
    else:
        with pytest.raises(ValueError, match="leaves no pixel"):
            model.cnn_blocks(conv, kernel)
