"""benchmarks/cv.py: the summary's statistics and paired differences, the refusal of split seed 0, and
one tiny end-to-end run whose JSON must agree with itself (last/best epoch, last-epoch weights rescored)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.synth import make_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import cv  # noqa: E402


def _run(recipe: str, seed: int, last: float, best: float, tta: float | None = None) -> dict:
    return {"recipe": recipe, "seed": seed, "last_acc": last, "best_acc": best, "tta_last_acc": tta,
            "wall_s": 10.0, "extract_s": 1.0, "train_s": 2.0, "features_cached": recipe != "default"}


def test_summary_pairs_splits_by_seed_and_uses_sample_std():
    runs = [_run("default", 100, 0.90, 0.92, 0.91), _run("default", 101, 0.94, 0.95, 0.95),
            _run("other", 101, 0.97, 0.97), _run("other", 100, 0.91, 0.93)]  # order differs from the baseline's
    s = cv.summarise(runs, ["default", "other"])
    assert s["default"]["last_acc"]["mean"] == pytest.approx(0.92)
    assert s["default"]["last_acc"]["std"] == pytest.approx(0.0282843, abs=1e-6)  # n - 1, not n (0.02)
    diff = s["other"]["last_acc_minus_default"]
    assert diff["mean"] == pytest.approx(0.02) and diff["std"] == pytest.approx(0.0141421, abs=1e-6)  # 0.01, 0.03
    assert s["other"]["tta_last_acc"] == {"mean": None, "std": None, "n": 0}  # missing values are not zeros
    assert s["other"]["any_cached"] and not s["default"]["any_cached"]
    header, rows = cv.table(s, ["default", "other"])
    assert rows[1][header.index("last − default (pts)")] == "2.00 ± 1.41"


def test_split_seed_zero_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="include 0"):
        cv.main(["--data", str(tmp_path), "--first-seed", "0", "--splits", "2"])


def test_parse_sets_reads_json_values_and_rejects_missing_equals():
    assert cv.parse_sets(["epochs=2", "model=efficientnet_lite2", "amp=false"]) == {
        "epochs": 2, "model": "efficientnet_lite2", "amp": False}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        cv.parse_sets(["epochs"])


def test_tiny_sweep_writes_consistent_runs(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=10, size=64)
    out = tmp_path / "cv.json"
    assert cv.main(["--data", str(data), "--splits", "1", "--set", "epochs=2", "--set", "image_size=64",
                    "--set", "fast_views=1", "--set", "workers=1", "--cache", str(tmp_path / "cache"),
                    "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    (run,) = payload["runs"]
    assert (run["recipe"], run["seed"], run["mode"]) == ("default", 100, "fast")
    assert run["last_acc"] == run["curve"][-1] and run["best_acc"] == pytest.approx(max(run["curve"]), abs=1e-4)
    # the copied last-epoch weights, rescored through the full model from the photos, give fast mode's own
    # last-epoch figure (from cached activations) to within one photo
    assert abs(run["plain_full_last_acc"] - run["last_acc"]) <= 1 / run["n_val"] + 1e-6
    assert 0 <= run["tta_last_acc"] <= 1 and not run["features_cached"]
    assert payload["summary"]["default"]["last_acc"]["n"] == 1
    assert str(Path(__file__).resolve().parent.parent) not in out.read_text()  # repo-relative paths only
    # resuming with the same recipe and seed trains nothing again and keeps the run and both commands
    assert cv.main(["--data", str(data), "--splits", "1", "--resume", str(out), "--no-tta"]) == 0
    again = json.loads(out.read_text())
    assert again["runs"] == payload["runs"] and len(again["commands"]) == 2
