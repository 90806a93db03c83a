"""MNIST loading: sources in order, verification of content, and clear errors for bad files."""

import io
import zipfile

import numpy as np
import pytest

from hailopipe import data
from hailopipe.errors import PipelineError
from hailopipe.fileio import load_npz, save_npz
from tests.conftest import SHARED

REAL = SHARED / "mnist.npz"


def fake_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.integers(0, 10 if k.startswith("y") else 256, shape).astype(np.uint8)
            for k, shape in data.SHAPES.items()}


@pytest.mark.skipif(not REAL.exists(), reason="shared/data/mnist.npz not present")
def test_real_file_verifies_and_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_NPZ", str(REAL))
    out = tmp_path / "mnist.npz"
    assert data.prepare(out) == {"train": 60000, "val": 10000}
    split = data.load_split(out)
    assert split["y_train"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert split["y_val"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    before = out.read_bytes()
    data.prepare(out)
    assert out.read_bytes() == before


def test_modified_content_fails_the_digest(tmp_path, monkeypatch):
    p = tmp_path / "mnist.npz"
    save_npz(p, fake_arrays())
    monkeypatch.setenv("MNIST_NPZ", str(p))
    with pytest.raises(PipelineError, match="content checksum"):
        data.load_official()


@pytest.mark.parametrize("edit,words", [
    (lambda a: a.pop("y_test"), "y_test"),
    (lambda a: a.__setitem__("x_train", a["x_train"][:100]), "x_train"),
    (lambda a: a.__setitem__("x_test", a["x_test"].astype(np.float32)), "x_test"),
    (lambda a: a["y_train"].__setitem__(0, 11), "labels outside"),
])
def test_wrong_arrays_are_named(edit, words):
    arrays = fake_arrays()
    edit(arrays)
    with pytest.raises(PipelineError, match=words):
        data.verify(arrays, "src.npz")


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04" + b"\0" * 40])
def test_corrupt_file(tmp_path, monkeypatch, content):
    p = tmp_path / "mnist.npz"
    p.write_bytes(content)
    monkeypatch.setenv("MNIST_NPZ", str(p))
    with pytest.raises(PipelineError, match=str(p)):
        data.load_official()


def test_missing_env_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_NPZ", str(tmp_path / "nope.npz"))
    with pytest.raises(PipelineError, match="MNIST_NPZ=.*not found"):
        data.locate()


def test_keras_cache_then_download(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_NPZ", raising=False)
    cache = tmp_path / "keras" / "mnist.npz"
    monkeypatch.setattr(data, "KERAS_CACHE", cache)
    served = b"this is not the official file"

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    calls = []
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: calls.append(url) or Resp(served))
    with pytest.raises(PipelineError, match="sha256"):
        data.locate()
    assert calls == [data.MNIST_URL] and not cache.exists()  # a bad download leaves nothing behind
    cache.write_bytes(b"x")
    assert data.locate() == cache  # a cached copy is reused without a download
    assert len(calls) == 1


def test_offline_download_error_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_NPZ", raising=False)
    monkeypatch.setattr(data, "KERAS_CACHE", tmp_path / "mnist.npz")

    def fail(url, timeout):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", fail)
    with pytest.raises(PipelineError, match="MNIST_NPZ"):
        data.locate()


def test_npz_refuses_pickles(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(PipelineError, match=str(p)):
        load_npz(p)


def test_saved_npz_is_byte_stable_and_plain_zip(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_npz(a, {"z": np.arange(3), "a": np.float32(1.5)})
    save_npz(b, {"a": np.float32(1.5), "z": np.arange(3)})
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        assert [i.date_time for i in zf.infolist()] == [(1980, 1, 1, 0, 0, 0)] * 2
    assert load_npz(a)["a"].shape == ()
