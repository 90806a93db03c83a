"""bench/calibration_sweep.py collect: one row per calibration size, every row from the baseline's model."""

import importlib.util

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("calibration_sweep", ROOT / "bench" / "calibration_sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def rev(size, model, compiled, seed=0):
    return {"rev": f"r{size}{model}", "data": {
        "params": {"params.yaml": {"data": {"calibration": {"size": size, "seed": seed}, "train": {"epochs": 10}}}},
        "metrics": {"metrics/evaluate.json": {"data": {"float": {"accuracy": 0.98}, "quantized": {"accuracy": compiled},
                                                       "compiled": {"accuracy": compiled}}},
                    "metrics/noise.json": {"data": {"output_snr_db": 40.0}}},
        "deps": {"models/float/model.tflite": {"hash": model}}}}


def test_rows_come_from_the_baseline_model_only():
    baseline = rev(2000, "aaa", 0.9825)
    baseline["experiments"] = [{"name": "same-model", "revs": [rev(64, "aaa", 0.9827)]},
                               {"name": "other-model", "revs": [rev(256, "bbb", 0.9801)]},
                               {"name": "other-params", "revs": [rev(16, "aaa", 0.97, seed=3)]}]
    rows = sweep.collect([{"rev": "workspace", "data": baseline["data"]}, baseline])
    assert [(r["calibration_size"], r["compiled"], r["model_md5"]) for r in rows] == [(64, 0.9827, "aaa"),
                                                                                   (2000, 0.9825, "aaa")]
    assert set(sweep.COLUMNS) == set(rows[0])
