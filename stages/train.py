"""Stage train: train the Keras classifier (`train.arch`: dense or cnn) and export model.h5 and model.tflite.

    python -m stages.train           # reads params.yaml `train`, data/mnist.npz; writes models/float/
"""

import logging

from hailopipe import data
from hailopipe.errors import run_main
from stages import params

log = logging.getLogger("stages.train")
DATA, OUT_DIR, LIVE_DIR = "data/mnist.npz", "models/float", "metrics/train"


def config(p: params.Params, arch: str | None = None):
    """The TrainConfig params.yaml asks for (for `arch`, default `train.arch`), every value checked
    (the cnn's keys whatever the arch).  `epochs` and `learning_rate` are one number for both
    architectures or a mapping with one per architecture, `{dense: 10, cnn: 4}`."""
    from hailopipe import model

    arch = arch or p.choice("train.arch", model.ARCHS)
    conv, kernel = tuple(p.int_list("train.conv", lo=1, hi=1024)), p.int("train.kernel", 1, 28)
    try:
        model.cnn_blocks(conv, kernel)
    except ValueError as exc:
        raise p.fail("train.conv", f"does not fit the image with train.kernel {kernel} ({exc})", list(conv)) from None
    return model.TrainConfig(
        hidden=tuple(p.int_list("train.hidden", lo=1, hi=8192)),
        activation=p.choice("train.activation", ("relu",)),
        dropout=p.float("train.dropout", 0.0, 0.9),
        epochs=per_arch(p, "train.epochs", arch, p.int, 1, 1000),
        batch_size=p.int("train.batch_size", 1, 60000),
        learning_rate=per_arch(p, "train.learning_rate", arch, p.float, 1e-7, 10.0),
        seed=p.int("train.seed", 0, 2**31 - 1),
        arch=arch,
        conv=conv,
        kernel=kernel,
        head=tuple(p.int_list("train.head", lo=1, hi=8192, min_len=0)))


def per_arch(p: params.Params, key: str, arch: str, read, lo, hi):
    """`key`'s value for `arch`: `key` itself if it is a number, else `key.<arch>` of its mapping
    (both architectures' values checked, so a typo in the other fails too)."""
    from hailopipe import model

    if not isinstance(p.value(key), dict):
        return read(key, lo, hi)
    if set(p.mapping(key)) != set(model.ARCHS):
        raise p.fail(key, f"must be a number or a mapping with one value for each of {', '.join(model.ARCHS)}",
                     p.mapping(key))
    values = {a: read(f"{key}.{a}", lo, hi) for a in model.ARCHS}
    return values[arch]


def describe(cfg) -> str:
    """The architecture in one line: 784-256-128-10, or conv 8-16-16 3x3 -> 10."""
    if cfg.arch == "cnn":
        return f"conv {'-'.join(map(str, cfg.conv))} {cfg.kernel}x{cfg.kernel} -> {'-'.join(map(str, (*cfg.head, 10)))}"
    return "-".join(map(str, (784, *cfg.hidden, 10)))


def main() -> None:
    p = params.load()
    from hailopipe import model

    model.pin_cpu()  # before TensorFlow is imported: the same trained bytes on any x86-64 CPU
    cfg = config(p)
    arrays = data.load_split(DATA)
    log.info("train: %s on %d images, %d epochs, batch %d", describe(cfg),
             len(arrays["y_train"]), cfg.epochs, cfg.batch_size)
    net, final = model.train(cfg, data.to_float(arrays["x_train"]), arrays["y_train"],
                             data.to_float(arrays["x_val"]), arrays["y_val"], live_dir=LIVE_DIR)
    paths = model.export(net, OUT_DIR)
    log.info("train: val_accuracy %.4f; wrote %s, %s", final.get("val_accuracy", float("nan")),
             paths["h5"], paths["tflite"])


if __name__ == "__main__":
    run_main(main)
