"""onnxruntime twins of served models (infer/runtime.py): the same answers, heatmaps and checks as torch,
built in the background, and torch wherever there is no twin."""

from __future__ import annotations

import copy
import logging
import random
import threading
import time

import numpy as np
import pytest
import torch

from flowerdemo.infer import runtime
from flowerdemo.infer.explain import explain, prepare_for_explain
from flowerdemo.infer.faithfulness import check_faithfulness
from flowerdemo.infer.predict import _maps_layer, classify, probabilities, warm_up
from flowerdemo.models.checkpoints import load_checkpoint
from flowerdemo.models.registry import FlowerNet
from tests.synth import CLASS_STYLES, draw_sample

pytest.importorskip("onnxruntime")


@pytest.fixture
def serving(monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)
    runtime.enable()
    yield
    runtime.enable(False)


@pytest.fixture(scope="module")
def clf(trained_run):
    return load_checkpoint(trained_run.run_dir)  # its own model object: twins are per model


def _photo(kind: str, seed: int):
    return draw_sample(kind, 96, random.Random(seed))


def _twin(clf, wait: bool = True):
    return runtime.fast_forward(clf.model, clf.preprocessing.input_size, _maps_layer(clf.model), wait=wait)


def _forwards_of_torch(fn):
    """fn() and how many images went through a FlowerNet in torch meanwhile."""
    images: list[int] = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: images.append(args[0].shape[0]) if isinstance(m, FlowerNet) else None)
    try:
        return fn(), sum(images)
    finally:
        hook.remove()


def test_answers_heatmaps_and_checks_from_the_twin_equal_torchs(serving, clf, monkeypatch):
    warm_up(clf)
    twin = _twin(clf)
    assert twin is not None and twin.with_maps and twin.size == clf.preprocessing.input_size
    for kind, seed in [(k, s) for k in CLASS_STYLES for s in (1, 2)]:
        prepared = prepare_for_explain(clf, _photo(kind, seed), 200)
        runs = twin.runs
        def fast_path(p=prepared):  # as the app does: the CAM from the answer's own forward
            answer = classify(clf, prepared=p)
            return answer, explain(clf, method="gradcam", prepared=p, check=True, answered=answer)

        (fast, ex), torch_images = _forwards_of_torch(fast_path)
        assert torch_images == 0 and twin.runs - runs == 2  # the answer (its maps give the CAM), the check
        alone = explain(clf, method="gradcam", prepared=prepared)  # without the answer: its own twin forward
        assert twin.runs - runs == 3 and np.abs(alone.heatmap - ex.heatmap).max() < 1e-6
        monkeypatch.setenv(runtime.ENV, "torch")
        (slow, ref), torch_images = _forwards_of_torch(
            lambda p=prepared: (classify(clf, prepared=p), explain(clf, method="gradcam", prepared=p, check=True)))
        monkeypatch.delenv(runtime.ENV)
        assert torch_images >= 3  # the same three on torch (pytorch-grad-cam's GradCAM on a replica)
        for name, p in slow.probabilities.items():
            assert fast.probabilities[name] == pytest.approx(p, abs=1e-5)
        if slow.familiarity.score is not None:  # the reference encoder has its twin too
            assert fast.familiarity.score == pytest.approx(slow.familiarity.score, abs=1e-5)
        assert ex.class_name == ref.class_name
        assert np.abs(ex.heatmap - ref.heatmap).max() < 1e-4
        # the check of one CAM: the same on both (the two CAMs may differ in which of equal pixels are "top")
        same = [check_faithfulness(clf, prepared.tensor, ref.cam, ref.class_index)]
        monkeypatch.setenv(runtime.ENV, "torch")
        same.append(check_faithfulness(clf, prepared.tensor, ref.cam, ref.class_index))
        monkeypatch.delenv(runtime.ENV)
        for field in ("before", "after_top", "after_random"):
            assert getattr(same[0], field) == pytest.approx(getattr(same[1], field), abs=1e-5)
        assert ex.faithfulness.drop_top == pytest.approx(ref.faithfulness.drop_top, abs=0.05)


def test_a_heatmap_for_another_class_than_the_answer_equals_torchs(serving, clf, monkeypatch):
    assert _twin(clf) is not None
    prepared = prepare_for_explain(clf, _photo("circle", 9), 200)
    answer = classify(clf, prepared=prepared)
    other = list(answer.probabilities)[1]  # the runner-up, not the answer
    ex = explain(clf, method="gradcam", target=other, prepared=prepared, answered=answer)
    monkeypatch.setenv(runtime.ENV, "torch")
    ref = explain(clf, method="gradcam", target=other, prepared=prepared)
    assert ex.class_name == ref.class_name == other
    assert np.abs(ex.heatmap - ref.heatmap).max() < 1e-4


def test_concurrent_callers_get_their_serial_answers(serving, clf):
    assert _twin(clf) is not None
    photos = [_photo(kind, seed) for kind in CLASS_STYLES for seed in (3, 4, 5)]
    serial = [classify(clf, p).probabilities for p in photos]
    got: list = [None] * len(photos)
    gate = threading.Barrier(len(photos))

    def go(i: int) -> None:
        gate.wait()
        got[i] = classify(clf, photos[i]).probabilities

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(photos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, serial, strict=True):
        assert list(a) == list(b) and all(a[k] == pytest.approx(b[k], abs=1e-5) for k in a)


def test_the_first_request_starts_the_build_and_is_served_by_torch_meanwhile(serving, clf, monkeypatch):
    other = copy.deepcopy(clf)  # a model without a twin yet
    release, build = threading.Event(), runtime.build
    monkeypatch.setattr(runtime, "build", lambda *a, **k: release.wait(60) and build(*a, **k))
    size = other.preprocessing.input_size
    assert _twin(other, wait=False) is None  # the build started in the background (held until released)
    probs, torch_images = _forwards_of_torch(lambda: probabilities(other, torch.zeros(1, 3, size, size)))
    assert probs.shape == (1, len(other.classes)) and torch_images == 1  # torch serves meanwhile
    release.set()
    deadline = time.monotonic() + 60
    while _twin(other, wait=False) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    twin = _twin(other, wait=False)
    assert twin is not None
    _, torch_images = _forwards_of_torch(lambda: probabilities(other, torch.zeros(1, 3, size, size)))
    assert torch_images == 0 and twin.runs == 1
    assert runtime.fast_forward(other.model, size + 8) is None  # another size: torch


def test_nothing_is_built_unless_enabled_on_the_cpu_and_not_switched_off(clf, monkeypatch):
    fresh = copy.deepcopy(clf.model)
    size = clf.preprocessing.input_size
    runtime.enable(False)
    assert runtime.fast_forward(fresh, size, wait=True) is None  # a CLI or a training: never
    runtime.enable()
    try:
        monkeypatch.setenv(runtime.ENV, "torch")
        assert runtime.fast_forward(fresh, size, wait=True) is None
        monkeypatch.setenv(runtime.ENV, "tensorrt")
        with pytest.raises(runtime.RuntimeChoiceError, match="'tensorrt' is not accepted; use one of: auto, torch"):
            runtime.enable()
    finally:
        runtime.enable(False)


def test_a_twin_that_differs_from_torch_is_not_used(serving, clf, monkeypatch, caplog):
    other = copy.deepcopy(clf)
    monkeypatch.setattr(runtime, "PARITY", -1.0)  # no difference passes: as if the export were wrong
    with caplog.at_level(logging.WARNING, logger="flowerdemo.infer.runtime"):
        assert _twin(other) is None
    assert "serving it with torch" in caplog.text and "differ from torch's" in caplog.text
    prepared = prepare_for_explain(other, _photo("square", 7), 200)
    ex, torch_images = _forwards_of_torch(lambda: explain(other, method="gradcam", prepared=prepared))
    assert torch_images == 1 and ex.heatmap.max() > 0  # pytorch-grad-cam on torch, as before


def test_a_forward_takes_its_share_of_the_cores_with_a_session_per_thread_count(serving, clf, monkeypatch):
    from flowerdemo import device

    monkeypatch.setattr(device, "COMPUTE", device.ComputeShare(2))  # 2 cores, other processes not watched
    twin = runtime.build(clf.model, clf.preprocessing.input_size, threads=2)
    x = torch.randn(3, 3, twin.size, twin.size, generator=torch.Generator().manual_seed(1))
    alone = twin(x)[0]
    assert set(twin._sessions) == {2}  # alone: both cores
    with device.COMPUTE.share():  # another forward running: each gets one core
        shared = twin(x)[0]
    assert set(twin._sessions) == {1, 2}
    assert (alone - shared).abs().max() < 1e-5
