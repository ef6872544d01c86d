"""Calibrated probabilities and honest accuracy: temperature scaling, ECE / NLL / Brier, the Wilson
interval, the report's count and warning; the temperature through the engine, the checkpoint, predict,
explain and `flowerdemo evaluate`."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from flowerdemo.cli.main import main
from flowerdemo.config import TrainConfig
from flowerdemo.data.tensorcache import ImageTensors
from flowerdemo.infer.explain import explain
from flowerdemo.infer.predict import predict, probabilities
from flowerdemo.infer.preprocess import prepare_image
from flowerdemo.models.checkpoints import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from flowerdemo.models.registry import build_model
from flowerdemo.train.calibration import (
    T_MAX,
    calibration_metrics,
    calibration_summary,
    fit_temperature,
    unfit_reason,
)
from flowerdemo.train.engine import Run, finish
from flowerdemo.train.events import Finished
from flowerdemo.train.metrics import classification_report, format_report, wilson_interval
from tests.synth import draw_sample
from tests.test_checkpoints import _meta, _trained_like

# --- temperature fitting ----------------------------------------------------------------------------


def _nll(logits: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / t, labels))


@pytest.mark.parametrize("t_true", [0.5, 2.0])  # under-confident (as the shipped model) and over-confident
def test_fit_temperature_recovers_a_known_temperature(t_true):
    """Labels drawn from softmax(z): the true probabilities. Given z * t_true, the NLL's expected minimum
    is at T = t_true (the NLL is a proper scoring rule and softmax(z * t_true / t_true) is the truth)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=g) * 2.0
    labels = torch.multinomial(z.softmax(1), 1, generator=g)[:, 0]
    t = fit_temperature(z * t_true, labels)
    assert t == pytest.approx(t_true, rel=0.05)
    assert fit_temperature(z * t_true, labels) == t  # deterministic
    # it is the minimum of the NLL on these samples, not just near the truth
    assert _nll(z * t_true, labels, t) <= min(_nll(z * t_true, labels, t * 0.99), _nll(z * t_true, labels, t * 1.01))


def test_fit_temperature_keeps_1_when_the_split_cannot_say():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(30, 3, generator=g)
    assert fit_temperature(z[:5], z[:5].argmin(1)) == 1.0  # too few photos, even with every one wrong
    assert "only 5 validation photos" in unfit_reason(z[:5], z[:5].argmin(1))
    # no mistake: the likelihood keeps rising as T -> 0, sharpening to the bound would be a guess
    assert fit_temperature(z, z.argmax(1)) == 1.0 and "no mistake" in unfit_reason(z, z.argmax(1))
    bad = z.clone()
    bad[0, 0] = float("nan")
    assert fit_temperature(bad, z.argmin(1)) == 1.0 and "not all finite" in unfit_reason(bad, z.argmin(1))
    # always wrong: the flattest allowed probabilities
    assert fit_temperature(z, z.argmin(1)) == T_MAX and unfit_reason(z, z.argmin(1)) is None
    # one mistake among confident right answers: a finite sharpening, inside the bounds
    labels = z.argmax(1)
    labels[0] = z[0].argmin()
    t = fit_temperature(z, labels)
    assert 0.05 <= t < 1.0


# --- calibration figures, against hand-computed values -------------------------------------------------

# top probabilities 0.9 (right) and 0.92 (wrong) share the bin (13/15, 14/15]; 0.75 (right), 0.65 (wrong)
# and 0.55 (right) are alone in theirs: no value sits on a bin edge
PROBS = torch.tensor([[0.9, 0.1], [0.08, 0.92], [0.25, 0.75], [0.65, 0.35], [0.45, 0.55]])
LABELS = torch.tensor([0, 0, 1, 1, 1])


def test_ece_nll_brier_and_reliability_by_hand():
    m = calibration_metrics(PROBS, LABELS)
    # ECE = 2/5 |0.5 - 0.91| + 1/5 |1 - 0.75| + 1/5 |0 - 0.65| + 1/5 |1 - 0.55| = 0.164 + 0.05 + 0.13 + 0.09
    assert m["ece"] == pytest.approx(0.434, abs=1e-4)
    # NLL = -(ln 0.9 + ln 0.08 + ln 0.75 + ln 0.35 + ln 0.55) / 5
    assert m["nll"] == pytest.approx(-sum(map(math.log, (0.9, 0.08, 0.75, 0.35, 0.55))) / 5, abs=1e-4)
    assert m["nll"] == pytest.approx(0.9133, abs=1e-4)
    # Brier = (0.02 + 2 * 0.92^2 + 2 * 0.25^2 + 2 * 0.65^2 + 2 * 0.45^2) / 5 = 3.0878 / 5
    assert m["brier"] == pytest.approx(0.6176, abs=1e-4)
    assert (m["confidence"], m["accuracy"], m["count"]) == (pytest.approx(0.754), pytest.approx(0.6), 5)
    bins = m["reliability"]
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 5
    assert bins[13] == {"lower": 0.8667, "upper": 0.9333, "count": 2, "confidence": 0.91, "accuracy": 0.5}
    assert [(i, b["count"], b["confidence"], b["accuracy"]) for i, b in enumerate(bins) if b["count"] and i != 13] == [
        (8, 1, 0.55, 1.0), (9, 1, 0.65, 0.0), (11, 1, 0.75, 1.0)]
    assert all(b["confidence"] is None and b["accuracy"] is None for b in bins if not b["count"])
    # multi-class Brier sums over every class: (0.5 - 0)^2 + (0.3 - 0)^2 + (0.2 - 1)^2
    assert calibration_metrics(torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([2]))["brier"] == pytest.approx(0.98)
    perfect = calibration_metrics(torch.eye(3), torch.arange(3))
    assert (perfect["ece"], perfect["nll"], perfect["brier"]) == (0.0, 0.0, 0.0)
    assert calibration_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))["ece"] is None


def test_summary_before_is_the_raw_softmax_and_after_the_temperature():
    logits = PROBS.log()
    s = calibration_summary(logits, LABELS, 2.0, fitted_on="validation split (5 photos)")
    assert s["temperature"] == 2.0 and s["fitted_on"] == "validation split (5 photos)"
    assert s["before"]["ece"] == pytest.approx(0.434, abs=1e-4)
    assert s["after"] == {k: v for k, v in calibration_metrics((logits / 2).softmax(1), LABELS).items() if k != "reliability"}
    assert len(s["reliability"]["before"]) == len(s["reliability"]["after"]) == 15
    json.dumps(s)  # plain JSON (checkpoint metadata)


# --- honest accuracy ----------------------------------------------------------------------------------

def test_wilson_interval_by_hand():
    low, high = wilson_interval(9, 9)  # centre (1 + z^2/18) / (1 + z^2/9), half-width z sqrt(z^2/324) / (1 + z^2/9)
    assert (low, high) == (pytest.approx(0.7008, abs=1e-4), 1.0)
    assert wilson_interval(5, 10) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing measured: anything is possible
    low, high = wilson_interval(477, 497)
    assert low < 477 / 497 < high and high - low < 0.04


def test_report_carries_the_count_the_interval_and_a_warning_for_small_splits():
    classes = ("daisy", "rose", "tulip")
    y = torch.arange(3).repeat_interleave(3)  # 3 photos per class, all right
    report = classification_report(y, y, classes)
    assert (report["accuracy"], report["correct"], report["total"]) == (1.0, 9, 9)
    assert report["accuracy_interval"] == [pytest.approx(0.7008, abs=1e-4), 1.0]
    assert report["rough"] and "only 3 photos of daisy, 3 of rose and 3 of tulip" in report["warning"]
    assert "the accuracy is rough" in report["warning"] and "about 20 photos per class (ideally 50+)" in report["warning"]
    text = format_report(report)
    assert "accuracy 100.0% (9/9; 95% interval 70–100%)" in text and "warning: The validation split has only" in text

    y = torch.arange(3).repeat_interleave(25)
    pred = y.clone()
    pred[:5] = 1  # 5 daisies called roses
    report = classification_report(y, pred, classes)
    assert (report["correct"], report["total"], report["rough"], report["warning"]) == (70, 75, False, None)
    assert "accuracy 93.3% (70/75; 95% interval 85–97%)" in format_report(report)  # Wilson 70/75: 0.853-0.971
    # only the small class is named
    y = torch.tensor([0] * 30 + [1] * 30 + [2] * 4)
    warning = classification_report(y, y, classes)["warning"]
    assert "only 4 photos of tulip:" in warning and "daisy" not in warning


# --- the temperature in the checkpoint, predict and explain --------------------------------------------

def test_checkpoint_keeps_the_temperature_exactly(tmp_path):
    model = _trained_like("efficientnet_lite0")
    t = 0.7312345678901234
    save_checkpoint(tmp_path / "run", model, _meta(model, calibration={"temperature": t, "fitted_on": "test"}))
    assert load_checkpoint(tmp_path / "run").temperature == t
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["calibration"]["temperature"] == t


def test_an_old_checkpoint_without_calibration_predicts_as_before(tmp_path):
    model = _trained_like("efficientnet_lite0").to(memory_format=torch.channels_last)
    save_checkpoint(tmp_path / "old", model, _meta(model))
    clf = load_checkpoint(tmp_path / "old")
    assert "calibration" not in clf.meta and clf.temperature == 1.0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x.contiguous(memory_format=torch.channels_last)).softmax(1)
    # T = 1: the plain softmax. Not bit-equal: the product's forward may run with another intra-op thread
    # count (device.ComputeShare), which changes the order of float sums in the last bits
    torch.testing.assert_close(probabilities(clf, x), plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -1.5, "warm", None, True, float("nan"), float("inf")])
def test_a_bad_stored_temperature_is_a_checkpoint_error(tmp_path, bad):
    model = _trained_like("efficientnet_lite0")
    save_checkpoint(tmp_path / "bad", model, _meta(model, calibration={"temperature": bad}))
    with pytest.raises(CheckpointError, match="temperature must be a positive number"):
        load_checkpoint(tmp_path / "bad")


def test_predict_and_explain_return_softmax_of_logits_over_t(trained_run):
    clf = dataclasses.replace(load_checkpoint(trained_run.run_dir), temperature=0.5)
    img = draw_sample("circle", 96, random.Random(3), quadrant=1)  # asymmetric: TTA's mirror differs
    x = prepare_image(img, clf.preprocessing).tensor
    with torch.no_grad():
        logits = clf.model(x.contiguous(memory_format=torch.channels_last)).float()
        mirrored = clf.model(x.flip(-1).contiguous(memory_format=torch.channels_last)).float()
    expected = (logits / 0.5).softmax(1)[0]
    got = probabilities(clf, x)[0]
    assert torch.allclose(got, expected, atol=1e-6) and float(got.sum()) == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(got, logits.softmax(1)[0], atol=1e-3)  # the temperature does change them
    assert int(got.argmax()) == int(logits.argmax())  # but never the answer
    probs = predict(clf, img)
    assert list(probs)[0] == clf.classes[int(logits.argmax())]
    assert all(p == pytest.approx(float(expected[clf.classes.index(c)]), abs=1e-6) for c, p in probs.items())
    # test-time augmentation averages the two views' calibrated probabilities
    tta = predict(clf, img, tta=True)
    both = ((logits / 0.5).softmax(1)[0] + (mirrored / 0.5).softmax(1)[0]) / 2
    assert all(p == pytest.approx(float(both[clf.classes.index(c)]), abs=1e-6) for c, p in tta.items())
    ex = explain(clf, img)
    assert all(p == pytest.approx(float(expected[clf.classes.index(c)]), abs=1e-5) for c, p in ex.probabilities.items())
    assert sum(ex.probabilities.values()) == pytest.approx(1.0, abs=1e-6)


# --- the engine's finish phase -------------------------------------------------------------------------

def test_finish_fits_stores_and_reports_the_temperature(tmp_path, monkeypatch):
    """The finish phase alone, on synthetic validation logits with mistakes (a real run's tiny split is
    often all right, which keeps T = 1). The unknown-photo detector, which finish also fits, has its own
    tests (tests/test_unknown.py, on a real run): left out here."""
    from flowerdemo.train import engine

    def no_detector(trainer, seed, cached=None):
        return None
        yield  # a generator, as the real one

    monkeypatch.setattr(engine, "fit_unknown_detector", no_detector)
    model = build_model("efficientnet_lite0", 3, pretrained=False)
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(3).repeat(20)
    logits = torch.nn.functional.one_hot(labels, 3).float() * 1.5 + torch.randn(60, 3, generator=g)  # under-confident
    val = ImageTensors(torch.zeros(60, 3, 8, 8, dtype=torch.uint8), labels, tuple(Path(f"v{i}.png") for i in range(60)))
    run = Run(TrainConfig(), None, tmp_path)
    run.run_dir, run.classes = tmp_path / "run", ("a", "b", "c")
    run.trainer = SimpleNamespace(setup=SimpleNamespace(model=model, val=val))  # all finish reads of a trainer
    run.meta = {**_meta(model), "stopped": False}
    acc = float((logits.argmax(1) == labels).float().mean())
    run.best = (acc, 3, {k: v.clone() for k, v in model.state_dict().items()}, logits)
    (done,) = list(finish(run))
    assert isinstance(done, Finished)

    t = fit_temperature(logits, labels)
    assert 0.05 < t < 1.0  # sharpens: the logits were made under-confident
    meta = read_meta(run.run_dir)
    cal = meta["calibration"]
    assert cal["temperature"] == t and cal["fitted_on"] == "validation split (60 photos)" and "note" not in cal
    assert cal["after"]["nll"] < cal["before"]["nll"] and cal["after"]["ece"] < cal["before"]["ece"]
    assert sum(b["count"] for b in cal["reliability"]["after"]) == 60
    assert load_checkpoint(run.run_dir).temperature == t
    assert done.report["calibration"] == cal and "calibration" not in meta["metrics"]
    assert done.report["total"] == 60 and done.report["correct"] == round(acc * 60)
    # the mistakes gallery shows calibrated confidences, as the app would for those photos
    top = (logits / t).softmax(1).max(1).values
    assert all(m["confidence"] == pytest.approx(float(top[int(m["path"][1:-4])]), abs=1e-4) for m in done.mistakes)


def test_a_training_run_stores_its_calibration(trained_run):
    meta = read_meta(trained_run.run_dir)
    cal, done = meta["calibration"], trained_run.events[-1]
    assert done.report["calibration"] == cal
    assert cal["fitted_on"] == "validation split (12 photos)"
    assert {"ece", "nll", "brier"} <= set(cal["before"]) and {"ece", "nll", "brier"} <= set(cal["after"])
    assert all(sum(b["count"] for b in cal["reliability"][k]) == 12 for k in ("before", "after"))
    # T minimises the NLL on this split (or is 1 when the split has no mistake to calibrate against)
    assert cal["after"]["nll"] <= cal["before"]["nll"] + 1e-4
    if done.report["correct"] == done.report["total"]:
        assert cal["temperature"] == 1.0 and "no mistake" in cal["note"]
    assert load_checkpoint(trained_run.run_dir).temperature == cal["temperature"]
    # 4 validation photos per class: the report says the accuracy is rough
    assert done.report["total"] == 12 and done.report["rough"] and "only 4 photos of" in done.report["warning"]


# --- flowerdemo evaluate ------------------------------------------------------------------------------

def test_evaluate_json_and_text_show_count_interval_and_calibration(trained_run, tmp_path, capsys):
    # a copy of the trained checkpoint with a temperature that changes the figures
    clf = load_checkpoint(trained_run.run_dir)
    save_checkpoint(tmp_path / "hot", clf.model, {**clf.meta, "calibration": {"temperature": 3.0, "fitted_on": "test"}})
    argv = ["evaluate", "--data", str(trained_run.data), "--checkpoint", str(tmp_path / "hot"), "--split", "val"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # one JSON object, nothing else on stdout
    assert out["checkpoint"] == str(tmp_path / "hot") and out["split"] == "val"
    assert Path(out["data"]).resolve() == trained_run.data.resolve()
    assert out["total"] == out["images"] == 12 and out["accuracy"] == pytest.approx(out["correct"] / 12, abs=1e-4)
    low, high = out["accuracy_interval"]
    assert low <= out["accuracy"] <= high and (low, high) == tuple(pytest.approx(v, abs=1e-4)
                                                                   for v in wilson_interval(out["correct"], 12))
    assert set(out["per_class"]) == {"circle", "square", "triangle"} and sum(map(sum, out["confusion_matrix"])) == 12
    assert out["rough"] and out["warning"]
    assert out["temperature"] == 3.0 and out["calibration"]["temperature"] == 3.0
    before, after = out["calibration"]["before"], out["calibration"]["after"]
    assert {"ece", "nll", "brier"} <= set(before) and before != after  # T = 1 vs the stored T = 3
    assert after["confidence"] < before["confidence"]  # T > 1 softens

    # a checkpoint from before calibration: T = 1, so before and after agree, and the output says why
    save_checkpoint(tmp_path / "old", clf.model, {k: v for k, v in clf.meta.items() if k != "calibration"})
    assert main(["evaluate", "--data", str(trained_run.data), "--checkpoint", str(tmp_path / "old"), "--json"]) == 0
    old = json.loads(capsys.readouterr().out)
    assert old["temperature"] == 1.0 and old["split"] == "all" and old["total"] == 60
    assert old["calibration"]["before"] == old["calibration"]["after"] and "no stored temperature" in old["calibration"]["note"]

    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"({out['correct']}/12; 95% interval" in text and "warning: The validation split has only" in text
    assert "calibration" in text and "raw (T = 1)" in text and "with T = 3" in text and "ECE" in text


def test_model_lists_show_the_accuracy_with_its_count_and_interval_even_for_older_checkpoints():
    from flowerdemo.train.metrics import checkpoint_accuracy

    new = {"accuracy": 0.9, "correct": 9, "total": 10, "accuracy_interval": [0.596, 0.9821], "best_val_acc": 0.9}
    assert checkpoint_accuracy(new) == "90.0% (9/10; 95% interval 60–98%)"
    old = {"best_val_acc": 0.9, "confusion_matrix": [[4, 1], [0, 5]]}  # no count recorded: the matrix has it
    assert checkpoint_accuracy(old) == "90.0% (9/10; 95% interval 60–98%)"
    assert checkpoint_accuracy({"best_val_acc": 0.5}) == "50.0%" and checkpoint_accuracy({}) is None
