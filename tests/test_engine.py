"""The integer engine against an independent int64 reference, on random networks and inputs, for every
kernel this CPU runs (the compiled one's paths, AMX, AVX-512 VNNI and AVX2, and the numpy/BLAS one), through
every entry point."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hailopipe.engine import Engine, native
from hailopipe.engine.engine import avx2_exact
from hailopipe.errors import PipelineError
from hailopipe.network import Dense, Network
from hailopipe.quantization import arithmetic, optimizer
from hailopipe.quantization.config import OptimizeConfig
from hailopipe.quantization.qnetwork import QNetwork
from tests.conftest import random_network

KERNELS = [*native.PATHS, "numpy"]


def reference(qnet, q_in: np.ndarray) -> np.ndarray:
    """Plain int64 arithmetic, straight from the derivation: sum (q_x - z_x) q_w + q_b, then M."""
    x = q_in.reshape(len(q_in), int(np.prod(q_in.shape[1:]))).astype(np.int64)
    for layer in qnet.layers:
        acc = (x - layer.in_zp) @ layer.kernel.astype(np.int64) + layer.bias.astype(np.int64)
        m0, e = layer.m0.astype(np.int64), layer.shift.astype(np.int64)
        y = layer.out_zp + ((acc * m0 + (np.int64(1) << (e - 1))) >> e)
        qmin, qmax = arithmetic.qrange(layer.out_bits)
        y = np.clip(y, qmin, qmax)
        if layer.activation == "relu":
            y = np.maximum(y, layer.out_zp)
        x = y
    return x


def make_qnet(hidden, seed, precision, per_channel, wide=False, net=None):
    net = net or random_network(hidden, seed, scale=0.5 if wide else 0.1)
    calib = np.random.default_rng(seed).uniform(0, 1, (64, *net.input_shape)).astype(np.float32)
    cfg = OptimizeConfig(calib_size=64, per_channel=per_channel, precision=precision)
    return optimizer.quantize_network(net, calib, cfg)


def skip_unless_runs(kernel) -> None:
    """Skip where `kernel` is a native path this machine cannot run."""
    if kernel in native.PATHS and native.load_kernel()[0] is None:
        pytest.skip(f"native kernel unavailable here: {native.load_kernel()[1]}")
    if kernel in native.PATHS and kernel not in native.paths():
        pytest.skip(f"this CPU lacks {kernel}")


def make_engine(qnet, kernel, **kw) -> Engine:
    """Engine(qnet, kernel); skips where that kernel cannot run on this machine at all."""
    skip_unless_runs(kernel)
    e = Engine(qnet, kernel=kernel, **kw)
    assert e.kernel == kernel
    return e


def random_inputs(qnet, n, seed, bits=None):
    """n random storage integers of the network's input plus the extremes: all min, all max, a mix."""
    bits = bits or qnet.input_bits
    lo, hi = arithmetic.qrange(bits)
    shape = qnet.input_shape
    rng = np.random.default_rng(seed)
    q = rng.integers(lo, hi + 1, (n, *shape))
    extremes = np.stack([np.full(shape, lo), np.full(shape, hi), np.where(rng.random(shape) < 0.5, lo, hi)])
    return np.concatenate([q, extremes]).astype(arithmetic.storage_dtype(bits))


CASES = [((32, 16), {}, True), ((64,), {}, False), ((128, 64), {"fc3": "a16_w16"}, True),
         ((48, 24), {"fc1": "a16_w16", "fc2": "a16_w16", "fc3": "a16_w16"}, True),
         ((1100, 8), {}, True)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("hidden,precision,per_channel", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_engine_equals_int64_reference(hidden, precision, per_channel, seed, kernel):
    qnet = make_qnet(hidden, seed, precision, per_channel)
    q_in = random_inputs(qnet, 257, 100 + seed)
    if kernel in native.PATHS and precision:  # 16-bit weights: the int32 accumulators are not provably exact
        assert not all(avx2_exact(layer) for layer in qnet.layers)
        with pytest.raises(PipelineError, match="int32"):
            make_engine(qnet, kernel)
        assert Engine(qnet).kernel == "numpy"  # "auto" falls back
        return
    got = make_engine(qnet, kernel).run(q_in)
    assert got.dtype == arithmetic.storage_dtype(qnet.output.out_bits)
    np.testing.assert_array_equal(got.astype(np.int64), reference(qnet, q_in))


@pytest.mark.parametrize("kernel", KERNELS)
def test_extreme_weights_and_inputs_stay_exact(kernel):
    """All weights at ±127 and inputs at ±128: the largest accumulators the format allows."""
    qnet = make_qnet((1032,), 3, {}, True)
    for layer in qnet.layers:
        layer.kernel[...] = np.where(np.arange(layer.kernel.size).reshape(layer.kernel.shape) % 2, 127, -127)
    q_in = np.stack([np.full((28, 28, 1), v, np.int8) for v in (-128, 127)])
    np.testing.assert_array_equal(make_engine(qnet, kernel).run(q_in).astype(np.int64), reference(qnet, q_in))


@pytest.mark.parametrize("kernel", KERNELS)
def test_engine_is_deterministic_and_batch_independent(kernel):
    qnet = make_qnet((64, 32), 5, {}, True)
    q_in = np.random.default_rng(7).integers(-128, 128, (100, 28, 28, 1)).astype(np.int8)
    e = make_engine(qnet, kernel)
    whole = e.run(q_in)
    assert (whole == e.run(q_in)).all()
    singles = np.concatenate([e.run(q_in[i:i + 1]) for i in range(100)])
    assert (singles == whole).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [0, 1, 3, 5, 31, 32, 33, 130])
def test_batch_sizes_and_threads(kernel, threads, n):
    """Row counts around the kernel's tiles (4 rows) and chunks (32 rows), on 1 to 3 threads."""
    qnet = make_qnet((40, 24), 11, {}, True)
    q_in = random_inputs(qnet, 127, n)[:n]
    got = make_engine(qnet, kernel, threads=threads).run(q_in)
    assert got.shape == (n, 10)
    np.testing.assert_array_equal(got.astype(np.int64), reference(qnet, q_in))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dark", [0.0, 0.5, 0.81, 0.95, 1.0])
def test_inputs_with_zeros(kernel, dark):
    """Inputs whose real value is 0 (the zero point) in a fraction `dark` of places, so that the AVX2
    kernel's lists of nonzero pairs are empty, partial or skipped (it lists only past a fifth of
    zeros), in row tiles and leftover rows; the hidden layers' ReLU floors add their own zeros."""
    qnet = make_qnet((96, 40), 8, {}, True, wide=True)
    rng = np.random.default_rng(int(dark * 100))
    q_in = random_inputs(qnet, 130, 9)
    q_in[rng.random(q_in.shape) < dark] = qnet.input_zp
    q_in[5:9] = qnet.input_zp  # a whole tile of zero rows
    np.testing.assert_array_equal(make_engine(qnet, kernel).run(q_in).astype(np.int64), reference(qnet, q_in))


@pytest.mark.parametrize("kernel", KERNELS)
def test_real_digits(kernel, subset, fitted_qnet):
    """Real MNIST digits on a trained network, one at a time and batched, through the stream entry point."""
    u = subset["x_val"][:300, :, :, None]
    want = arithmetic.to_unsigned(reference(fitted_qnet, arithmetic.from_unsigned(u, 8)), 8)
    e = make_engine(fitted_qnet, kernel)
    np.testing.assert_array_equal(e.run_stream(u), want)
    np.testing.assert_array_equal(np.concatenate([e.run_stream(u[i:i + 1]) for i in range(0, 300, 7)]), want[::7])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape,hidden", [((5, 7, 1), (17, 3)), ((2, 3, 3), (1, 33)), ((1, 1, 16), (16, 16))])
def test_odd_widths(kernel, shape, hidden):
    """Input and layer widths that are not multiples of the kernel's padding (16)."""
    rng = np.random.default_rng(len(hidden))
    sizes = (int(np.prod(shape)), *hidden, 10)
    layers = [Dense(f"fc{i}", rng.standard_normal((k, c)).astype(np.float32), rng.standard_normal(c).astype(np.float32),
                    "relu" if i < len(sizes) - 1 else "linear") for i, (k, c) in enumerate(zip(sizes, sizes[1:]), 1)]
    qnet = make_qnet(None, 2, {}, True, net=Network("odd", shape, layers))
    q_in = random_inputs(qnet, 50, 3)
    np.testing.assert_array_equal(make_engine(qnet, kernel).run(q_in).astype(np.int64), reference(qnet, q_in))


def sixteen_bit_layer(out_bits: int) -> QNetwork:
    """A one-layer network (as run_layer builds) with 16-bit inputs and 8-bit weights: the
    second layer of a network whose first layer is a16_w16; optionally with 16-bit outputs too."""
    qnet = make_qnet((48, 24), 4, {"fc1": "a16_w16"}, True)
    layer = dataclasses.replace(qnet.layers[1], out_bits=out_bits)
    return QNetwork(layer.name, (1, 1, layer.kernel.shape[0]), layer.in_scale, layer.in_zp, 16, (0.0, 0.0), [layer])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("out_bits", [8, 16])
def test_sixteen_bit_activations(kernel, out_bits):
    qnet = sixteen_bit_layer(out_bits)
    assert avx2_exact(qnet.layers[0])
    q_in = random_inputs(qnet, 200, 5)
    e = make_engine(qnet, kernel)
    assert e.input_dtype == np.int16
    got = e.run(q_in)
    assert got.dtype == arithmetic.storage_dtype(out_bits)
    np.testing.assert_array_equal(got.astype(np.int64), reference(qnet, q_in))
    u = e.run_stream(arithmetic.to_unsigned(q_in, 16))
    np.testing.assert_array_equal(u, arithmetic.to_unsigned(reference(qnet, q_in), out_bits))


@pytest.mark.parametrize("kernel", KERNELS)
def test_stream_entry_point_and_out_buffer(kernel):
    qnet = make_qnet((64, 32), 6, {}, True)
    q_in = random_inputs(qnet, 90, 6)
    e = make_engine(qnet, kernel)
    want = reference(qnet, q_in)
    u = e.run_stream(arithmetic.to_unsigned(q_in, 8))
    assert u.dtype == np.uint8
    np.testing.assert_array_equal(u, arithmetic.to_unsigned(want, 8))
    buf = np.full((len(q_in), 10), 99, np.int8)
    assert e.run(q_in, out=buf) is buf
    np.testing.assert_array_equal(buf.astype(np.int64), want)
    ubuf = np.empty((len(q_in), 10), np.uint8)
    assert e.run_stream(arithmetic.to_unsigned(q_in, 8), out=ubuf) is ubuf
    np.testing.assert_array_equal(ubuf, u)
    wide = q_in.astype(np.int64)  # another integer dtype, values in range: converted
    np.testing.assert_array_equal(e.run(wide).astype(np.int64), want)
    ro = q_in.copy()
    ro.flags.writeable = False  # read-only input
    np.testing.assert_array_equal(e.run(ro[::-1]).astype(np.int64), want[::-1])


@pytest.mark.parametrize("kernel", KERNELS)
def test_bad_inputs(kernel):
    qnet = make_qnet((32, 16), 0, {}, True)
    e = make_engine(qnet, kernel)
    q = np.zeros((2, 28, 28, 1), np.int8)
    for bad, match in [(np.zeros((2, 28, 27, 1), np.int8), "784 values per row"), (np.zeros((784,), np.int8), "784"),
                       (q.astype(np.float32), "dtype float32"), (np.full((2, 784), 300, np.int16), "outside int8 range")]:
        with pytest.raises(PipelineError, match=match):
            e.run(bad)
    with pytest.raises(PipelineError, match="input stream: dtype float64"):
        e.run_stream(np.zeros((1, 784)))
    for out in (np.empty((2, 10), np.int16), np.empty((3, 10), np.int8), np.empty((10, 2), np.int8).T, [0] * 20):
        with pytest.raises(PipelineError, match="engine out"):
            e.run(q, out=out)
    with pytest.raises(PipelineError, match="not one of"):
        Engine(qnet, kernel="gpu")


def test_kernel_build_is_cached_and_failure_falls_back(tmp_path, monkeypatch):
    if native.load_kernel()[0] is None:
        pytest.skip(f"AVX2 kernel unavailable here: {native.load_kernel()[1]}")
    stale = tmp_path / "qkernel-0123456789abcdef.so"  # an earlier version's build
    stale.write_bytes(b"old")
    lib = native._build(tmp_path)
    assert lib.parent == tmp_path and lib.stat().st_size > 0
    assert not stale.exists()
    stamp = lib.stat().st_mtime_ns
    assert native._build(tmp_path) == lib and lib.stat().st_mtime_ns == stamp  # reused, not rebuilt
    monkeypatch.setenv("HAILOPIPE_CACHE", str(tmp_path / "fresh"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    fn, why, paths = native._load(use_installed=False)
    assert fn is None and "could not build _qkernel.c" in why and paths == ()
    assert not list((tmp_path / "fresh").glob("*.so"))  # no half-written library left behind


def test_auto_runs_the_best_native_path_this_cpu_has():
    """The paths the kernel reports are the CPU's own flags (/proc/cpuinfo), "auto" takes the best,
    and asking for a path the CPU lacks is one clear error."""
    if native.load_kernel()[0] is None:
        pytest.skip(f"native kernel unavailable here: {native.load_kernel()[1]}")
    flags = set(Path("/proc/cpuinfo").read_text().split())
    vnni = {"avx512bw", "avx512_vnni"} <= flags
    want = {"avx2"} | ({"avx512_vnni"} if vnni else set()) | ({"amx"} if vnni and {"amx_tile", "amx_int8"} <= flags else set())
    assert set(native.paths()) == want
    qnet = make_qnet((32, 16), 0, {}, True)
    assert Engine(qnet).kernel == native.paths()[0]
    for path in set(native.PATHS) - set(native.paths()):
        with pytest.raises(PipelineError, match=f"the {path} kernel cannot run on this CPU, which runs avx2"):
            Engine(qnet, kernel=path)


def test_the_install_time_build_runs_only_for_its_own_source(tmp_path, monkeypatch):
    """`pip install` (setup.py) builds the kernel beside its source; the engine loads that build, with
    no compiler needed at run time, and never a build of another version of the source."""
    lib = native.installed_library()
    if not lib.is_file():
        pytest.skip(f"no install-time build here ({lib.name}: pip install -e . builds it)")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("HAILOPIPE_CACHE", str(tmp_path / "cache"))
    fn, why, paths = native._load()
    assert fn is not None and why == "" and "avx2" in paths  # the compiler is not needed
    assert not (tmp_path / "cache").exists()
    edited = tmp_path / "_qkernel.c"
    edited.write_text(native.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(native, "SOURCE", edited)
    monkeypatch.setattr(native, "installed_library", lambda: lib)
    assert native._installed() is None  # stale for this source: compiled instead (here: no compiler)
    assert native._load()[0] is None
