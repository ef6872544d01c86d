"""`python -m flowerdemo experiment augment`: every configuration over 2 seeds, a report with mean ± std
and curve plots."""

from __future__ import annotations

import json
import re
import statistics

import pytest
from PIL import Image

from flowerdemo.cli.main import main
from flowerdemo.config import TrainConfig
from flowerdemo.train.experiments import SUITES, run_suite
from tests.synth import make_dataset


def test_augment_experiment_end_to_end(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=5, size=40)
    out = tmp_path / "report"
    code = main(["experiment", "augment", "--data", str(data), "--seeds", "2", "--out", str(out), "--mode", "fast",
                 "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--fast-views", "2", "--workers", "1"])
    assert code == 0
    report = (out / "report.md").read_text()
    assert capsys.readouterr().out.strip() == report.strip()  # the CLI prints the report

    results = json.loads((out / "results.json").read_text())
    names = [name for name, _ in SUITES["augment"]]
    assert results["seeds"] == 2 and list(results["runs"]) == names
    for name in names:
        runs = results["runs"][name]
        assert len(runs) == 2 and all(len(r["curve"]) == 2 and r["mode"] == "fast" for r in runs)
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all("±" in c for c in cells[1:4]), row
        best = [100 * r["best_val_acc"] for r in runs]
        mean, std = (float(v) for v in re.findall(r"-?\d+\.\d+", cells[1]))
        assert mean == pytest.approx(statistics.fmean(best), abs=0.006)
        assert std == pytest.approx(statistics.stdev(best), abs=0.006)
        loss_mean = float(cells[3].split("±")[0])
        assert loss_mean == pytest.approx(statistics.fmean(r["final_train_loss"] for r in runs), abs=6e-4)
    # the seed changes the run: two seeds of one configuration do not give identical curves
    assert any(runs[0]["curve"] != runs[1]["curve"] for runs in results["runs"].values())

    plot = out / "augment-curves.png"
    assert "(augment-curves.png)" in report
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 200
        assert len(set(img.convert("L").getdata())) > 10  # not a blank canvas


def test_experiments_need_two_seeds_and_a_known_suite(tmp_path):
    with pytest.raises(ValueError, match="at least 2 seeds"):
        run_suite("augment", tmp_path, TrainConfig(), 1, tmp_path / "out")
    with pytest.raises(ValueError, match="augment, schedule, freeze"):
        run_suite("dropout", tmp_path, TrainConfig(), 2, tmp_path / "out")
