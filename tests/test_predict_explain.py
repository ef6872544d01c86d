"""Prediction and Grad-CAM on the session's trained model (fast mode: frozen backbone)."""

from __future__ import annotations

import dataclasses
import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from flowerdemo.infer import explain as explain_module
from flowerdemo.infer.explain import CAM_METHODS, ExplainError, explain, heatmap_image, overlay_image, reblend
from flowerdemo.infer.predict import predict, probabilities
from flowerdemo.infer.preprocess import prepare_image
from flowerdemo.models.checkpoints import load_checkpoint
from flowerdemo.models.registry import FlowerNet, freeze
from tests.synth import CLASS_STYLES, draw_sample

CLASSES = tuple(CLASS_STYLES)


@pytest.fixture(scope="module")
def clf(trained_run):
    return load_checkpoint(trained_run.run_dir)


def _image(kind: str = "circle", seed: int = 5, size: int = 96, quadrant: int | None = None) -> Image.Image:
    return draw_sample(kind, size, random.Random(seed), quadrant=quadrant)


def _assert_no_hooks(model: torch.nn.Module) -> None:
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(m, attr, {}), f"{name or 'model'} keeps {attr}"


# --- predict ----------------------------------------------------------------------------------------

def test_predict_gives_ordered_probabilities_that_sum_to_one(clf):
    probs = predict(clf, _image("square"))
    assert set(probs) == set(CLASSES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    values = list(probs.values())
    assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)
    top2 = predict(clf, _image("square"), top_k=2)
    assert list(top2.items()) == list(probs.items())[:2]
    assert len(predict(clf, _image("square"), top_k=1)) == 1


def test_predict_recognises_new_images_of_every_class(clf):
    """Training (tensor cache) and prediction (PIL path) must prepare images the same way."""
    hits = [next(iter(predict(clf, _image(kind, seed)))) == kind for kind in CLASSES for seed in (11, 12, 13)]
    assert sum(hits) >= 8


def test_predict_accepts_paths_bytes_arrays_and_pil_images(clf, tmp_path):
    img = _image("triangle")
    path = tmp_path / "t.png"
    img.save(path)
    reference = predict(clf, img)
    for source in (path, str(path), path.read_bytes(), np.asarray(img), io.BytesIO(path.read_bytes())):
        got = predict(clf, source)
        assert list(got) == list(reference)
        assert np.allclose(list(got.values()), list(reference.values()), atol=1e-6)


def test_tta_averages_the_image_and_its_mirror(clf):
    img = _image("circle", quadrant=1)  # asymmetric: the mirror gives other probabilities
    x = prepare_image(img, clf.preprocessing).tensor
    plain, mirrored = probabilities(clf, x)[0], probabilities(clf, x.flip(-1))[0]
    assert not torch.allclose(plain, mirrored, atol=1e-4)
    with_tta = predict(clf, img, tta=True)
    expected = (plain + mirrored) / 2
    assert sum(with_tta.values()) == pytest.approx(1.0, abs=1e-5)
    for name, p in with_tta.items():
        assert p == pytest.approx(float(expected[clf.classes.index(name)]), abs=1e-6)


# --- explain ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_cam_method_gives_a_heatmap_in_0_1_at_the_image_size(clf, method):
    model, (w, h) = clf, (120, 96)  # not square: catches a transposed heatmap
    if method == "scorecam":  # a forward per batch of scored channels: a smaller input keeps it quick
        model, (w, h) = dataclasses.replace(clf, preprocessing=clf.preprocessing.with_size(64)), (80, 64)
    batches: list[int] = []  # every forward of a FlowerNet: the CAM runs on a replica of clf.model, not on it

    def count(module, args, out):
        if isinstance(module, FlowerNet):
            batches.append(args[0].shape[0])

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        ex = explain(model, _image("square").resize((w, h)), method=method)
    finally:
        hook.remove()
    if method == "scorecam":  # the image once, then masked copies for the most active channels only (bounded)
        from flowerdemo.infer.explain import BoundedScoreCAM

        per_forward = min(BoundedScoreCAM.batch_size, BoundedScoreCAM.channels)
        assert max(batches[1:]) == per_forward
        assert len(batches) == 1 + math.ceil(BoundedScoreCAM.channels / BoundedScoreCAM.batch_size)
    else:  # the CAM's own forward gives the probabilities too: the image runs through the model once
        assert batches == [1]
    assert ex.method == method
    assert ex.heatmap.dtype == np.float32 and ex.heatmap.shape == (h, w)
    assert ex.heatmap.min() >= 0.0 and ex.heatmap.max() <= 1.0 and ex.heatmap.max() > 0.1
    assert ex.overlay.size == (w, h) and ex.overlay.mode == "RGB"
    assert ex.class_name == next(iter(ex.probabilities)) and ex.class_index == CLASSES.index(ex.class_name)
    if model is clf:
        assert ex.class_name == "square"
    assert sum(ex.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    _assert_no_hooks(clf.model)
    assert heatmap_image(ex.heatmap).size == (w, h)


def test_heatmap_is_zero_outside_the_crop_the_model_saw(clf):
    ex = explain(clf, _image("circle").resize((160, 96)))  # wide image: centre crop drops the sides
    assert ex.heatmap.shape == (96, 160)
    box = prepare_image(_image("circle").resize((160, 96)), clf.preprocessing).box
    left, top, right, bottom = box
    assert right - left < 160 and ex.heatmap[:, :left].max() == 0 and ex.heatmap[:, right:].max() == 0
    assert ex.heatmap[top:bottom, left:right].max() > 0.5


def test_the_overlay_is_pytorch_grad_cams_blend_and_a_new_opacity_needs_no_model_run(clf, monkeypatch):
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    mask = rng.random((40, 60)).astype(np.float32)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        theirs = show_cam_on_image(np.asarray(photo, dtype=np.float32) / 255, mask, use_rgb=True,
                                   image_weight=1 - alpha).astype(int)
        ours = np.asarray(overlay_image(photo, heatmap_image(mask), alpha), dtype=int)
        assert np.abs(ours - theirs).max() <= 1  # float rounding of 1 - (1 - alpha) at most
    wide = _image("circle").resize((160, 96))  # cropped by the model: the overlay outlines the crop
    ex = explain(clf, wide, alpha=0.3)
    monkeypatch.setattr(clf, "model", None)  # a re-blend that touched the model would fail
    again = reblend(clf, wide, heatmap_image(ex.heatmap), 0.3)
    assert np.array_equal(np.asarray(again), np.asarray(ex.overlay))
    lighter = np.asarray(reblend(clf, wide, heatmap_image(ex.heatmap), 0.8), dtype=int)
    assert np.abs(lighter - np.asarray(ex.overlay, dtype=int)).mean() > 5  # the new opacity shows
    assert reblend(clf, _image("square"), heatmap_image(ex.heatmap), 0.3) is None  # another photo's heatmap
    with pytest.raises(ExplainError, match="alpha"):
        overlay_image(photo, heatmap_image(mask), 1.5)


def _quadrant_mass(h: np.ndarray) -> np.ndarray:
    rows, cols = h.shape[0] // 2, h.shape[1] // 2
    mass = np.array([h[:rows, :cols].sum(), h[:rows, cols:].sum(), h[rows:, :cols].sum(), h[rows:, cols:].sum()])
    return mass / max(mass.sum(), 1e-9)


def test_gradcam_looks_at_the_object(clf):
    """Objects pinned to each quadrant (row-major): the heatmap's mass is largest in that quadrant."""
    rng = random.Random(1)
    mass = np.zeros((4, 4))
    for q in range(4):
        for kind in CLASSES:
            mass[q] += _quadrant_mass(explain(clf, draw_sample(kind, 96, rng, quadrant=q)).heatmap)
    mass /= len(CLASSES)
    for q in range(4):
        others = np.delete(mass[q], q)
        assert mass[q, q] > others.max(), f"object in quadrant {q}, heatmap mass per quadrant {mass[q].round(2)}"


def test_frozen_backbone_model_is_explained_and_its_flags_restored(trained_run, clf):
    frozen = load_checkpoint(trained_run.run_dir)
    freeze(frozen.model, "backbone")  # as fast mode trains it: no gradients in the backbone
    flags = [p.requires_grad for p in frozen.model.parameters()]
    img = _image("triangle", quadrant=2)
    ex = explain(frozen, img)
    assert ex.heatmap.max() > 0.5
    assert [p.requires_grad for p in frozen.model.parameters()] == flags
    assert np.allclose(ex.heatmap, explain(clf, img).heatmap, atol=1e-4)  # same weights, same map
    _assert_no_hooks(frozen.model)


def test_hooks_and_flags_are_released_when_the_cam_fails(trained_run, monkeypatch):
    fresh = load_checkpoint(trained_run.run_dir)
    freeze(fresh.model, "backbone")
    flags = [p.requires_grad for p in fresh.model.parameters()]

    class Boom:
        def __init__(self, index):
            pass

        def __call__(self, output):
            raise RuntimeError("target failed")

    monkeypatch.setattr(explain_module, "ClassifierOutputTarget", Boom)
    with pytest.raises(RuntimeError, match="target failed"):
        explain(fresh, _image(), target="circle")  # a chosen class goes through our target object
    _assert_no_hooks(fresh.model)
    assert [p.requires_grad for p in fresh.model.parameters()] == flags
    monkeypatch.undo()
    assert explain(fresh, _image()).heatmap.max() > 0  # the replica was given back too


def test_explaining_does_not_change_later_predictions(clf):
    img = _image("square", seed=8)
    before = predict(clf, img)
    explain(clf, img, method="gradcam++")
    assert predict(clf, img) == before
    _assert_no_hooks(clf.model)


def test_a_chosen_target_class_is_honoured(clf):
    img = _image("circle", quadrant=0)
    predicted = explain(clf, img)
    assert predicted.class_name == "circle"
    for target in ("square", 2):
        ex = explain(clf, img, target=target)
        expected = target if isinstance(target, str) else CLASSES[target]
        assert ex.class_name == expected and ex.class_index == CLASSES.index(expected)
        assert ex.probabilities == predicted.probabilities  # the prediction itself is unchanged
        assert not np.allclose(ex.heatmap, predicted.heatmap, atol=1e-3)
    assert explain(clf, img, target="").class_name == "circle"  # empty = the predicted class


def test_bad_requests_raise_explain_errors_that_say_what_is_accepted(clf):
    img = _image()
    with pytest.raises(ExplainError) as err:
        explain(clf, img, method="gradcam3")
    assert all(name in str(err.value) for name in CAM_METHODS)
    with pytest.raises(ExplainError) as err:
        explain(clf, img, target="rose")
    assert "rose" in str(err.value) and all(c in str(err.value) for c in CLASSES)
    for index in (3, -1):
        with pytest.raises(ExplainError, match="out of range"):
            explain(clf, img, target=index)
    with pytest.raises(ExplainError, match="alpha"):
        explain(clf, img, alpha=1.5)
    _assert_no_hooks(clf.model)



def test_a_large_jpeg_is_decoded_at_the_coarsest_scale_the_model_can_use(clf, tmp_path):
    """A 2400x1800 JPEG: probabilities need only the eval resize (DCT scale 1/8); the app's Grad-CAM
    (overlay at most 1024 px) asks for half of that cap, so 1/2 (1200x900), then shrinks to 1024."""
    path = tmp_path / "big.jpg"
    _image("circle").resize((2400, 1800)).save(path, quality=90)
    prep = clf.preprocessing
    small = prepare_image(path, prep)
    assert small.original.size == (300, 225)  # 1/8
    assert min(small.original.size) >= prep.resize_size
    assert next(iter(predict(clf, path))) == "circle"
    assert prepare_image(path, prep, min_side=512).original.size == (1200, 900)  # 1/2: 1/4 would be 450 < 512
    ex = explain(clf, path, max_side=1024)
    assert ex.heatmap.shape == (768, 1024) and ex.overlay.size == (1024, 768) and ex.class_name == "circle"
