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
    assert f"{meta['metrics']['best_val_acc']:.2%}" in card
    assert meta["command"] in card
    for section in ("## Provenance", "## Classes", "## Metrics", "## Limits"):
        assert section in card
    assert json.loads((SHIPPED / "meta.json").read_text())["classes"] == list(FLOWERS)
