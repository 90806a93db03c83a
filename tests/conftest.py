"""Shared fixtures: real MNIST digits from tests/data, random float networks, quantized networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hailopipe import data, network
from hailopipe.network import Dense, Network
from hailopipe.quantization import optimizer
from hailopipe.quantization.config import OptimizeConfig

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT / "tests" / "data" / "mnist_subset.npz"
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def subset():
    with np.load(SUBSET) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session")
def val_images(subset):
    """Validation digits in the model's domain (pixels / 255) and their labels."""
    return data.to_float(subset["x_val"]), subset["y_val"]


@pytest.fixture(scope="session")
def val_raw(subset):
    """The same digits as raw pixels 0-255 (float32 NHWC): what quantized networks take."""
    return data.to_raw(subset["x_val"])


def random_network(hidden=(32, 16), seed=0, name="net", scale=0.1) -> Network:
    rng = np.random.default_rng(seed)
    sizes = (784, *hidden, 10)
    layers = []
    for i, (k, c) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        act = "relu" if i < len(sizes) - 1 else "linear"
        layers.append(Dense(f"fc{i}", (rng.standard_normal((k, c)) * scale / np.sqrt(k / 16)).astype(np.float32),
                            (rng.standard_normal(c) * 0.05).astype(np.float32), act, [f"orig/fc{i}"]))
    return Network(name, (28, 28, 1), layers)


def trained_like_network(subset, hidden=(64, 32), seed=0, epochs=40) -> Network:
    """A small network trained in numpy (SGD with momentum, softmax cross-entropy) on real digits,
    so that quantization sees realistic weights and ranges without importing TensorFlow."""
    net = random_network(hidden, seed, scale=1.0)
    rng = np.random.default_rng(seed)
    x = data.to_float(subset["x_train"]).reshape(len(subset["x_train"]), -1)
    y = subset["y_train"]
    vel = [(np.zeros_like(layer.kernel), np.zeros_like(layer.bias)) for layer in net.layers]
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), len(x) // 50):
            _, hs = network.forward(net, x[idx], collect=True)
            p = np.exp(hs[-1] - hs[-1].max(1, keepdims=True))
            g = p / p.sum(1, keepdims=True)
            g[np.arange(len(idx)), y[idx]] -= 1
            g /= len(idx)
            for i in range(len(net.layers) - 1, -1, -1):
                inp = hs[i - 1] if i else x[idx]
                gw, gb = inp.T @ g, g.sum(0)
                g = (g @ net.layers[i].kernel.T) * (inp > 0) if i else None
                vw, vb = vel[i]
                vw *= 0.9
                vw -= 0.05 * gw
                vb *= 0.9
                vb -= 0.05 * gb
                net.layers[i].kernel += vw
                net.layers[i].bias += vb
    return net


@pytest.fixture
def small_net():
    return random_network()


@pytest.fixture(scope="session")
def fitted_net(subset):
    return trained_like_network(subset)


@pytest.fixture(scope="session")
def fitted_qnet(fitted_net, val_raw):
    return optimizer.quantize_network(fitted_net, val_raw[:200], OptimizeConfig(calib_size=200))


@pytest.fixture(scope="session")
def fitted_norm_net(fitted_net):
    """`fitted_net` as the quantized HAR's HN has it: with the model script's normalization1 layer."""
    return optimizer.with_normalization(fitted_net, OptimizeConfig())
