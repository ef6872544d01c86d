"""Heatmaps you can check: the faithfulness check, the crop outline, bounded ScoreCAM, the default method."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image

from flowerdemo.infer.cam_times import CAM_SECONDS
from flowerdemo.infer.explain import CAM_METHODS, CROP_NOTE, DEFAULT_CAM, BoundedScoreCAM, best_cam_method, explain
from flowerdemo.infer.faithfulness import Faithfulness, check_faithfulness, random_regions, top_region
from flowerdemo.infer.preprocess import prepare_image
from flowerdemo.models.checkpoints import load_checkpoint
from flowerdemo.models.registry import FlowerNet
from tests.synth import draw_sample


@pytest.fixture(scope="module")
def clf(trained_run):
    return load_checkpoint(trained_run.run_dir)


def _image(kind: str = "circle", seed: int = 5, size: int = 96, quadrant: int | None = None) -> Image.Image:
    return draw_sample(kind, size, random.Random(seed), quadrant=quadrant)


# --- the check's parts --------------------------------------------------------------------------------

def test_top_region_takes_exactly_the_area_even_on_a_plateau():
    cam = torch.zeros(40, 50)
    cam[:5, :5] = 1.0  # 25 hot pixels, the rest a plateau at 0 (as a ReLU'd CAM): a threshold would take all
    mask = top_region(cam, 0.2)
    assert int(mask.sum()) == 400 and bool(mask[:5, :5].all())


def test_random_regions_are_seeded_exact_in_area_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    a = random_regions((60, 60), 0.2, 3, torch.Generator().manual_seed(1), grid=4)
    b = random_regions((60, 60), 0.2, 3, torch.Generator().manual_seed(1), grid=4)
    c = random_regions((60, 60), 0.2, 3, torch.Generator().manual_seed(2), grid=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (3, 60, 60) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.flatten(1).sum(1).tolist() == [720] * 3
    assert not torch.equal(a[0], a[1])  # each region drawn anew


def test_the_sentence_and_verdict_follow_the_numbers():
    f = Faithfulness("rose", before=0.91, after_top=0.35, after_random=0.88, area=0.2)
    assert f.drop_top == pytest.approx(0.56) and f.drop_random == pytest.approx(0.03)
    assert f.verdict == "faithful"
    assert f.text == ("Removing the highlighted 20% of the photo lowers 'rose' from 91% to 35%; removing a random 20% "
                      "lowers it to 88%: the heatmap points at what the model used.")
    assert dataclasses.replace(f, after_top=0.82).verdict == "weak"
    unfaithful = dataclasses.replace(f, after_top=0.93)
    assert unfaithful.verdict == "not faithful" and "raises 'rose' from 91% to 93%" in unfaithful.text
    assert "any better than chance" in unfaithful.text
    sure = Faithfulness("sunflower", before=1.0, after_top=0.99, after_random=0.995, area=0.2)  # a walkthrough's
    assert sure.verdict == "still sure" and "cannot tell" in sure.text and "chance" not in sure.text  # sunflower
    assert dataclasses.replace(sure, after_top=0.6).verdict == "faithful"  # sure, but not without that region
    assert dataclasses.replace(sure, after_random=0.7).verdict == "not faithful"  # a random fifth mattered more
    low = Faithfulness("tulip", 0.04, 0.01, 0.03, 0.2)
    assert low.verdict == "inconclusive" and "'tulip' is only 4%" in low.text
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.before = 0.5  # type: ignore[misc]


# --- the check on a model -----------------------------------------------------------------------------

def test_explain_with_check_gives_probabilities_in_0_1_and_names_the_class(clf):
    assert explain(clf, _image("square")).faithfulness is None  # only when asked
    for target in (None, "triangle"):
        ex = explain(clf, _image("square"), check=True, target=target)
        f = ex.faithfulness
        assert isinstance(f, Faithfulness) and f.class_name == ex.class_name
        assert all(0.0 <= v <= 1.0 for v in (f.before, f.after_top, f.after_random))
        assert f.area == pytest.approx(0.2, abs=0.01)
        assert f.before == pytest.approx(ex.probabilities[ex.class_name], abs=1e-4)  # same calibrated probability
        assert f"'{ex.class_name}'" in f.text
        # the check reuses the CAM forward's probability instead of scoring the unchanged photo again: the
        # same figures as a check that scores it itself
        own = check_faithfulness(clf, prepare_image(_image("square"), clf.preprocessing).tensor, ex.cam, ex.class_index)
        assert own.before == pytest.approx(f.before, abs=1e-4)
        assert (own.after_top, own.after_random) == pytest.approx((f.after_top, f.after_random), abs=1e-5)


def test_removing_the_object_hurts_more_than_removing_background_or_random_parts(clf):
    """A constructed CAM on the object's quadrant vs one on an empty quadrant, same image and area."""
    img = _image("circle", seed=3, quadrant=0)  # the circle sits in the top-left quadrant
    x = prepare_image(img, clf.preprocessing).tensor
    s = x.shape[-1]
    on_object, on_background = np.zeros((s, s), np.float32), np.zeros((s, s), np.float32)
    on_object[: s // 2, : s // 2] = 1.0
    on_background[s // 2:, s // 2:] = 1.0
    index = clf.classes.index("circle")
    good = check_faithfulness(clf, x, on_object, index, area=0.2)
    bad = check_faithfulness(clf, x, on_background, index, area=0.2)
    assert good.before > 0.5 and good.before == pytest.approx(bad.before)
    assert good.after_random == pytest.approx(bad.after_random)  # same seed, same random regions
    assert good.drop_top > good.drop_random + 0.1 and good.verdict == "faithful"
    assert bad.drop_top < good.drop_top - 0.1 and bad.verdict != "faithful"
    assert check_faithfulness(clf, x, on_object, index, seed=1).after_random != good.after_random


def test_check_rejects_bad_areas_and_shapes(clf):
    x = prepare_image(_image(), clf.preprocessing).tensor
    cam = np.ones(x.shape[-2:], np.float32)
    for area in (0.0, 1.0):
        with pytest.raises(ValueError, match="area"):
            check_faithfulness(clf, x, cam, 0, area=area)
    with pytest.raises(ValueError, match="CAM"):
        check_faithfulness(clf, x, cam[:-1], 0)


# --- the crop outline ---------------------------------------------------------------------------------

def test_the_overlay_outlines_the_crop_of_a_wide_photo(clf):
    img = _image("circle").resize((160, 96))
    ex = explain(clf, img)
    left, top, right, bottom = prepare_image(img, clf.preprocessing).box
    assert ex.crop_note == CROP_NOTE and "square" in ex.crop_note
    overlay = np.asarray(ex.overlay)
    assert (overlay[top + 5: bottom - 5, left - 2] == 255).all()  # white line just left of the box
    assert (overlay[top + 5: bottom - 5, right + 1] == 255).all()  # and just right of it


def test_no_outline_when_the_model_sees_the_whole_photo(clf):
    def drawn_on(ex, img) -> bool:  # does the overlay differ from the plain blend of photo and heatmap?
        rgb = np.asarray(img, dtype=np.float32) / 255.0
        return not np.array_equal(np.asarray(ex.overlay), show_cam_on_image(rgb, ex.heatmap, use_rgb=True, image_weight=0.5))

    whole = dataclasses.replace(clf, preprocessing=dataclasses.replace(clf.preprocessing, crop_pct=1.0))
    img = _image("circle")  # square, and with crop_pct 1 no margin is cropped
    ex = explain(whole, img)
    assert ex.crop_note is None and not drawn_on(ex, img)
    cropped = explain(clf, img)  # the default eval crop drops a margin of a square photo too: it is marked
    assert cropped.crop_note == CROP_NOTE and drawn_on(cropped, img)


# --- bounded ScoreCAM and the default method ----------------------------------------------------------

def test_bounded_scorecam_scores_only_its_channels_in_batches(clf):
    small = dataclasses.replace(clf, preprocessing=clf.preprocessing.with_size(64))
    batches: list[int] = []

    def count(module, args, out):
        if isinstance(module, FlowerNet):
            batches.append(args[0].shape[0])

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        ex = explain(small, _image("square").resize((80, 64)), method="scorecam")
    finally:
        hook.remove()
    assert CAM_METHODS["scorecam"] is BoundedScoreCAM
    n, size = BoundedScoreCAM.channels, BoundedScoreCAM.batch_size
    assert batches[0] == 1 and max(batches) == min(n, size) and len(batches) == 1 + math.ceil(n / size)
    assert ex.heatmap.shape == (64, 80) and ex.heatmap.dtype == np.float32 and ex.heatmap.max() > 0.1


def test_best_cam_method_reads_the_ranking_and_falls_back():
    assert DEFAULT_CAM == "gradcam"
    assert list(CAM_SECONDS) == list(CAM_METHODS) and all(v > 0 for v in CAM_SECONDS.values())  # a time per method
    assert CAM_METHODS["scorecam"] is BoundedScoreCAM and CAM_METHODS["gradcam"].__name__ == "GradCAM"  # names right
    for meta in (None, {}, {"cam_ranking": None}, {"cam_ranking": "eigencam"}, {"cam_ranking": ["random", 3]}):
        assert best_cam_method(meta) == "gradcam"
    assert best_cam_method({"cam_ranking": ["random", "no-such-cam", "eigencam", "gradcam"]}) == "eigencam"
    assert best_cam_method({"cam_ranking": ("layercam",)}) == "layercam"
