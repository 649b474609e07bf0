"""examples/ics_figure1.py, shortened: artefacts are written and well formed, and the BN net's
sigmoid-input percentiles shift less than the plain net's.

"Shift" is the example's `movement`: after the first 10% of evaluations, the sum over the
15/50/85th percentiles of |mean over the last 20% of evaluations - mean over the first 20%|.
Measured while writing this test (1000 steps, eval every 20, seeds 0-4, CPU): plain
5.92/3.06/3.29/3.29/1.87, BN 0.50/0.60/0.55/0.41/0.31, per-seed ratio plain/BN 5.1-11.8 (11.8 on
seed 0, the one run here); the test asks for a factor 2.  Total variation of the raw curves is NOT lower for BN
at this length (eval-mode jitter dominates it); it is only reported, not tested.
"""
import csv
import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_example():
    path = os.path.join(ROOT, "examples", "ics_figure1.py")
    spec = importlib.util.spec_from_file_location("ics_figure1", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    ex = _load_example()
    out = tmp_path_factory.mktemp("ics")
    steps, every = 1000, 20
    result = ex.main(["--steps", str(steps), "--eval-every", str(every), "--out", str(out),
                      "--seed", "0", "--quiet"])
    return ex, out, result, steps, every


def test_artefacts_exist_and_are_well_formed(run):
    ex, out, result, steps, every = run
    for png in ("ics_figure1.png", "ics_drift.png"):
        with open(out / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
        assert os.path.getsize(out / png) > 20_000, png   # not an empty canvas
    rows = list(csv.DictReader(open(out / "ics_figure1.csv")))
    assert list(rows[0]) == ["step", "net", "test_acc", "p15", "p50", "p85"]
    n_eval = steps // every + 1
    for net in ("plain", "bn"):
        r = [x for x in rows if x["net"] == net]
        assert [int(x["step"]) for x in r] == list(range(0, steps + 1, every))
        assert len(r) == n_eval
        for x in r:
            p = [float(x[k]) for k in ("p15", "p50", "p85")]
            assert all(math.isfinite(v) for v in p) and p[0] <= p[1] <= p[2]
            assert 0.0 <= float(x["test_acc"]) <= 1.0
    for net, layers in (("plain", 3), ("bn", 6)):
        d = list(csv.DictReader(open(out / f"ics_drift_{net}.csv")))
        assert len(d) == layers * steps
        assert all(math.isfinite(float(x["sym_kl"])) and float(x["sym_kl"]) >= 0 for x in d)
        if net == "bn":
            assert {x["source"] for x in d if x["layer"].startswith("bn")} == {"norm"}
    summary = json.load(open(out / "ics_summary.json"))
    assert summary["bn"]["final_test_acc"] == pytest.approx(result["bn"]["final_test_acc"])


def test_both_nets_learn(run):
    _, _, result, _, _ = run
    # 10 classes: chance is 0.1.  Measured at 1000 steps: plain 0.86-0.89, BN 0.97-0.98.
    assert result["plain"]["final_test_acc"] > 0.6
    assert result["bn"]["final_test_acc"] > 0.9


def test_bn_sigmoid_input_shifts_less(run):
    _, _, result, _, _ = run
    plain, bn = result["plain"]["movement"], result["bn"]["movement"]
    assert bn * 2 < plain, (plain, bn)


def test_movement_measures_on_known_curves():
    ex = _load_example()
    flat = [[0.0, 1.0, 2.0]] * 10
    ramp = [[t, t + 1.0, t + 2.0] for t in range(10)]
    assert ex.movement(flat, 0, 2) == 0.0
    # last two evaluations average t = 8.5, first two t = 0.5: 8 per percentile
    assert ex.movement(ramp, 0, 2) == pytest.approx(24.0)
    assert ex.total_variation(ramp, 0) == pytest.approx(27.0)
    assert ex.total_variation(ramp, 5) == pytest.approx(12.0)
