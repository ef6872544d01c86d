"""The model committed under checkpoints/ (what `python app.py` serves at start): it loads with no
network, its metadata describes it completely, its card agrees with its metadata, and it fits the
15 MB budget. Skipped (with the reason) in a checkout without the file."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from flowerdemo.infer.predict import predict
from flowerdemo.models.checkpoints import load_checkpoint, read_meta
from flowerdemo.serve.runs import DEFAULT_RUN

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / DEFAULT_RUN
FLOWERS = ("daisy", "dandelion", "rose", "sunflower", "tulip")

pytestmark = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(),
                                reason=f"{SHIPPED} is not in this checkout")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the shipped model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_loads_offline_and_predicts_the_five_flowers(no_network):
    clf = load_checkpoint(SHIPPED)
    assert clf.classes == FLOWERS
    img = Image.new("RGB", (300, 200), (40, 120, 40))
    ImageDraw.Draw(img).ellipse((100, 50, 200, 150), fill=(250, 220, 30))
    probs = predict(clf, img)
    assert set(probs) == set(FLOWERS) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_metadata_is_complete():
    meta = read_meta(SHIPPED / "model.safetensors")
    for key in ("architecture", "classes", "head", "preprocessing", "config", "metrics", "versions", "data", "command"):
        assert meta.get(key), f"metadata lacks {key!r}"
    m = meta["metrics"]
    assert m["classes"] == list(FLOWERS)
    assert set(m["per_class"]) == set(FLOWERS)
    assert all({"precision", "recall", "f1", "support"} <= set(m["per_class"][c]) for c in FLOWERS)
    confusion = torch.tensor(m["confusion_matrix"])
    assert confusion.shape == (5, 5)
    support = sum(m["per_class"][c]["support"] for c in FLOWERS)
    assert int(confusion.sum()) == support == sum(meta["data"]["counts"]["val"].values())
    # the headline accuracy is the confusion matrix's diagonal on the held-out split, not a typed-in number
    assert m["best_val_acc"] == pytest.approx(float(confusion.diag().sum()) / support, abs=1e-6)
    assert meta["command"].startswith("python -m flowerdemo train")
    assert meta["preprocessing"]["input_size"] > 0 and len(meta["preprocessing"]["mean"]) == 3


def test_size_and_model_card_agree_with_the_metadata():
    weights = SHIPPED / "model.safetensors"
    assert weights.stat().st_size <= 15_000_000
    meta = read_meta(weights)
    card = (SHIPPED / "README.md").read_text()
    from flowerdemo.figures import checkpoint_accuracy

    assert f"**{checkpoint_accuracy(meta['metrics'])}**" in card  # count and interval, from the stored figures
    assert meta["command"] in card
    for section in ("## Provenance", "## Classes", "## Metrics", "## Calibration", "## Photos of none of these classes",
                    "## Heatmaps", "## Limits"):
        assert section in card
    assert (SHIPPED / "reliability.png").is_file() and "![Reliability diagram](reliability.png)" in card
    assert f"T = {meta['calibration']['temperature']:.4f}" in card
    assert json.loads((SHIPPED / "meta.json").read_text())["classes"] == list(FLOWERS)


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="no shipped model in this checkout")
def test_the_shipped_model_says_none_of_these_for_non_flowers_and_knows_its_drawings_apart():
    """The shipped detector on photos that installed packages ship (a portrait, a pagoda) and on synthetic
    textures: rejected at 'normal'; a drawn daisy (examples/) is accepted and called a daisy."""
    import importlib.util

    import numpy as np
    from PIL import Image

    from flowerdemo.infer.predict import classify
    from flowerdemo.models.checkpoints import load_checkpoint

    clf = load_checkpoint(SHIPPED)
    assert clf.detector is not None and clf.temperature != 1.0
    outside = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize(
        (320, 240), Image.Resampling.BICUBIC) for i in range(3)]
    for module, rel in (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"), ("sklearn", "datasets/images/china.jpg")):
        spec = importlib.util.find_spec(module)
        if spec and spec.origin:
            outside.append(Path(spec.origin).parent / rel)
    for image in outside:
        pred = classify(clf, image)
        assert pred.rejected, (image, pred.familiarity)
    daisy = classify(clf, Path(__file__).resolve().parent.parent / "examples" / "daisy.jpg")
    assert not daisy.rejected and daisy.top[0] == "daisy"
