"""The engine's native kernel (`_qkernel.c`), on each path this CPU runs (AVX2, AVX-512 VNNI, AMX), on
convolutional networks, against the independent int64
reference of tests/test_engine_cnn.py: every non-depthwise conv case of that file as a network of
its own, then followed by a max pool (SAME and VALID, 2x2 and 3x3, strides 1-2) and a dense layer
(the flatten of padded channels), networks ending in a conv or a pool (NHWC output streams), a pool
first, 16-bit activations into 8-bit weights, int8 extremes, single images and batches that split
into uneven chunks among threads; and the engine's choice: avx2 where every layer can run there,
the numpy path (with its reason under kernel="avx2") for depthwise, average pooling or 16-bit
weights.  Skipped, with the reason, where the kernel cannot be built or the CPU lacks AVX2."""

import zlib

import numpy as np
import pytest

from hailopipe import network
from hailopipe.engine import Engine, native
from hailopipe.errors import PipelineError
from hailopipe.quantization import arithmetic, optimizer
from hailopipe.quantization.qnetwork import QDense, QNetwork
from tests.test_engine_cnn import CONV_CASES, SAME, VALID, inputs, make_conv, reference_conv, reference_pool

FN, WHY = native.load_kernel()
pytestmark = pytest.mark.skipif(FN is None, reason=f"the AVX2 kernel cannot run here: {WHY}")


def chain(*layers) -> QNetwork:
    first = layers[0]
    bits = first.bits if hasattr(first, "bits") else first.in_bits
    return QNetwork("net", tuple(first.in_shape), first.in_scale, first.in_zp, bits, (0.0, 1.0), list(layers))


def pool_after(layer, kind="max", size=2, stride=2, padding=VALID):
    return arithmetic.quantize_pool(f"{kind}pool1", kind, (size, size), (stride, stride), padding,
                                    tuple(layer.out_shape), layer.out_bits, layer.out_scale, layer.out_zp)


def dense_after(prev, rng, units=10):
    """A random 8-bit-weight QDense on the flattened output of `prev`."""
    k = int(np.prod(prev.out_shape))
    scale, zp = (prev.out_scale, prev.out_zp)
    bits = prev.bits if hasattr(prev, "bits") else prev.out_bits
    dense = network.Dense("fc1", rng.standard_normal((k, units)).astype(np.float32) * 0.1,
                          rng.standard_normal(units).astype(np.float32) * 0.1)
    return optimizer.quantize_dense(dense, bits, scale, zp, (-4.0, 4.0), "a8_w8", True)


def reference(qnet: QNetwork, q: np.ndarray) -> np.ndarray:
    from tests.test_engine import reference as dense_reference

    h = q.reshape(len(q), *qnet.input_shape).astype(np.int64)
    for i, layer in enumerate(qnet.layers):
        if isinstance(layer, QDense):
            rest = QNetwork("tail", (1, 1, int(layer.kernel.shape[0])), layer.in_scale, layer.in_zp, layer.in_bits,
                            (0.0, 1.0), qnet.layers[i:])
            return dense_reference(rest, h.reshape(len(h), -1).astype(arithmetic.storage_dtype(layer.in_bits)))
        h = (reference_pool if hasattr(layer, "kind") else reference_conv)(layer, h.astype(
            arithmetic.storage_dtype(layer.bits if hasattr(layer, "kind") else layer.in_bits)))
    return h.reshape(len(h), -1)


def check(qnet: QNetwork, rng, n=37) -> None:
    for path in native.paths():
        check_path(qnet, np.random.default_rng(rng.integers(1 << 30)), path, n)


def check_path(qnet: QNetwork, rng, path: str, n: int) -> None:
    e = Engine(qnet, kernel=path)
    assert e.kernel == path
    bits = qnet.input_bits
    q = inputs(qnet.input_shape, bits, qnet.input_zp, rng, n=n - 4)
    want = reference(qnet, q)
    got = e.run(q.reshape(len(q), -1))
    np.testing.assert_array_equal(got.astype(np.int64), want)
    np.testing.assert_array_equal(e.run(q[:1].reshape(1, -1)).astype(np.int64), want[:1])  # a single image
    u = arithmetic.to_unsigned(q.reshape(len(q), -1).astype(np.int64), bits).astype(arithmetic.stream_dtype(bits))
    out_bits = qnet.layers[-1].bits if hasattr(qnet.layers[-1], "kind") else qnet.layers[-1].out_bits
    np.testing.assert_array_equal(e.run_stream(u).astype(np.int64), arithmetic.to_unsigned(want, out_bits))


CONVS = [c for c in CONV_CASES if not c[0] and c[10] == "a8_w8"]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "{}x{}x{}-{}-k{}-s{}-{}-{}-in{}".format(
    c[1], c[2], c[3], c[4], c[5], c[6], c[7].split("_")[0], c[8], c[9]))
def test_conv_networks_match_the_reference(case):
    _, h, w, cin, cout, k, stride, padding, activation, in_bits, mode = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    conv = make_conv(rng, h, w, cin, cout, k, stride, padding, activation, False, in_bits, mode)
    check(chain(conv), rng)  # ends in a conv: NHWC output
    oh, ow, _ = conv.out_shape
    if oh >= 2 and ow >= 2:
        pool = pool_after(conv, size=2, stride=2, padding=SAME if oh % 2 else VALID)
        check(chain(conv, pool), rng)  # ends in a pool
        check(chain(conv, pool, dense_after(pool, rng)), rng)


@pytest.mark.parametrize("size, stride, padding", [(2, 2, VALID), (3, 1, SAME), (3, 2, SAME), (2, 1, VALID)])
def test_the_mnist_shape_with_every_pool(size, stride, padding):
    """Hailo's MNIST CNN shape (conv SAME, pool, conv VALID, pool, conv VALID, dense) and pool variants."""
    rng = np.random.default_rng(size * 10 + stride)
    c1 = make_conv(rng, 28, 28, 1, 8, 3, 1, SAME, "relu")
    p1 = pool_after(c1, size=size, stride=stride, padding=padding)
    c2 = make_conv(rng, *p1.out_shape[:2], 8, 16, 3, 1, VALID, "relu", in_zp=c1.out_zp)
    c2 = _fed_by(c2, c1)
    p2 = pool_after(c2, size=2, stride=2, padding=SAME)
    c3 = _fed_by(make_conv(rng, *p2.out_shape[:2], 16, 16, 3, 1, VALID, "relu", in_zp=c2.out_zp), c2)
    check(chain(c1, p1, c2, p2, c3, dense_after(c3, rng)), rng, n=70)


def _fed_by(layer, prev):
    """`layer` with the input qparams of `prev`'s output (the scale only changes the multiplier)."""
    import dataclasses

    return dataclasses.replace(layer, in_scale=prev.out_scale, in_zp=prev.out_zp)


def test_a_pool_first_and_16_bit_activations():
    rng = np.random.default_rng(5)
    conv = make_conv(rng, 9, 9, 3, 4, 3, 1, SAME, "relu", False, 16, "a8_w8")  # 16-bit input, 8-bit weights
    pool = arithmetic.quantize_pool("maxpool1", "max", (2, 2), (2, 2), SAME, conv.in_shape, 16, conv.in_scale,
                                    conv.in_zp)
    conv = _fed_by(make_conv(rng, *pool.out_shape[:2], 3, 4, 3, 1, SAME, "relu", False, 16, "a8_w8",
                             in_zp=pool.out_zp), pool)
    check(chain(pool, conv), rng)


def test_int8_extremes():
    rng = np.random.default_rng(11)
    conv = make_conv(rng, 10, 10, 16, 16, 3, 1, SAME, "linear", extreme=True)
    check(chain(conv, pool_after(conv)), rng)


def test_large_batches_split_among_threads():
    rng = np.random.default_rng(2)
    conv = make_conv(rng, 28, 28, 1, 8, 3, 1, SAME, "relu")
    qnet = chain(conv, pool_after(conv))
    q = inputs(conv.in_shape, 8, conv.in_zp, rng, n=1001).reshape(-1, int(np.prod(conv.in_shape)))
    want = Engine(qnet, kernel="numpy").run(q)
    for threads in (1, 2, 3):
        for path in native.paths():
            np.testing.assert_array_equal(Engine(qnet, kernel=path, threads=threads).run(q), want)


@pytest.mark.parametrize("what", ["depthwise", "avgpool", "a16_w16"])
def test_what_the_kernel_cannot_run_goes_to_numpy(what):
    rng = np.random.default_rng(1)
    conv = make_conv(rng, 8, 8, 4, 4, 3, 1, SAME, "relu", depthwise=what == "depthwise",
                     in_bits=16 if what == "a16_w16" else 8, mode="a16_w16" if what == "a16_w16" else "a8_w8")
    qnet = chain(conv, pool_after(conv, kind="avg" if what == "avgpool" else "max"))
    assert Engine(qnet).kernel.startswith("numpy")
    with pytest.raises(PipelineError, match="the avx2 kernel cannot run net"):
        Engine(qnet, kernel="avx2")
