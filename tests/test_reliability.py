"""Tests for flowerdemo.models.reliability: the reliability diagram drawn from a calibration block made by
the real calibration_summary on synthetic logits (no model, no files but tmp_path)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from flowerdemo.models.reliability import has_diagram, reliability_bins, reliability_diagram, save_reliability_diagram
from flowerdemo.train.calibration import calibration_summary


def synthetic(n: int = 200, temperature: float = 0.5, seed: int = 0) -> dict:
    """Over-confident logits on 4 classes (70 % right) and the summary for `temperature`."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    logits = torch.randn(n, 4, generator=g) * 3
    right = torch.rand(n, generator=g) < 0.7
    logits[right, labels[right]] += 6
    return calibration_summary(logits, labels, temperature, fitted_on=f"validation split ({n} photos)")


def test_a_diagram_of_before_and_after_is_a_sensible_image_with_ink_in_both_panels(tmp_path):
    cal = synthetic()
    # empty bins (4 classes: no top probability below 1/4) are part of the test
    assert any(b["count"] == 0 for b in reliability_bins(cal, "before"))
    img = reliability_diagram(cal)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert 600 <= img.width <= 1400 and 300 <= img.height <= 800 and img.width > img.height
    px = np.asarray(img)
    left, right = px[:, : img.width // 2], px[:, img.width // 2:]
    for half in (left, right):  # each panel drew bars, not a blank canvas
        assert (half.std(axis=2) > 40).mean() > 0.02  # coloured (non-grey) pixels: bars and hatching
    path = save_reliability_diagram(cal, tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(path).size == img.size


def test_temperature_one_draws_a_single_panel():
    two, one = reliability_diagram(synthetic(temperature=0.5)), reliability_diagram(synthetic(temperature=1.0))
    assert one.height == two.height and one.width < 0.6 * two.width


def test_no_photos_at_all_still_draws():
    cal = calibration_summary(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 1.0)
    assert all(b["count"] == 0 and b["accuracy"] is None for b in reliability_bins(cal, "before"))
    assert cal["before"]["ece"] is None
    assert reliability_diagram(cal).width > 300


def test_bins_inside_before_and_after_are_read_too():
    cal = synthetic()
    nested = {"temperature": cal["temperature"], "before": {**cal["before"], "reliability": cal["reliability"]["before"]},
              "after": {**cal["after"], "reliability": cal["reliability"]["after"]}}
    assert reliability_bins(nested, "after") == cal["reliability"]["after"]
    assert reliability_diagram(nested).size == reliability_diagram(cal).size


def test_a_block_without_bins_has_no_diagram_and_says_why():
    assert not has_diagram(None) and not has_diagram({}) and has_diagram(synthetic())
    with pytest.raises(ValueError, match="no reliability bins"):
        reliability_diagram({"temperature": 1.0, "before": {"ece": 0.1}, "after": {"ece": 0.1}})


def test_drawing_from_threads_at_once_gives_the_same_picture():
    cal = synthetic()
    reference = np.asarray(reliability_diagram(cal))
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(np.asarray(reliability_diagram(cal)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(np.array_equal(r, reference) for r in results)


def test_the_train_tab_shows_the_diagram_and_a_line_on_the_unknown_photo_detector():
    from pathlib import Path

    from flowerdemo.train.events import Finished
    from ui.train_view import TrainView

    cal = synthetic()
    report = {"accuracy": 0.7, "correct": 140, "total": 200, "accuracy_interval": [0.63, 0.76], "macro_f1": 0.7,
              "per_class": {}, "confusion_matrix": [], "calibration": cal,
              "unknown": {"method": "knn-cosine", "train_photos": 1986, "bank_photos": 1986,
                          "shares": {"strict": 0.9, "normal": 0.95, "lenient": 0.99}}}
    done = TrainView(3).finished(Finished(Path("run-x"), 0.7, 2, 3, 12.0, False, report, ()))
    assert isinstance(done["reliability"], Image.Image) and done["reliability"].size == reliability_diagram(cal).size
    assert "detector fitted on 1,986 training photos" in done["summary"]
    assert "at 'normal' strictness it accepts 95% of the validation photos" in done["summary"]

    old = {k: v for k, v in report.items() if k not in ("unknown", "calibration")}
    stopped = TrainView(3).finished(Finished(Path("run-y"), 0.7, 1, 1, 5.0, True, old, ()))
    assert stopped["reliability"] is None  # no bins: nothing drawn, the tab hides the box
    assert "stopped run skips the unknown-photo detector" in stopped["summary"]
    assert "puts every photo into one of its classes" in stopped["summary"]
    finished = TrainView(3).finished(Finished(Path("run-z"), 0.7, 1, 3, 5.0, False, old, ()))
    assert "this run has no unknown-photo detector" in finished["summary"]
