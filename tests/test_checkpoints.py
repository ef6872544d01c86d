"""Checkpoints: exact round trips, self-description, no network / no pickle, clear errors, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import time

import pytest
import torch
from safetensors.torch import save_file

from flowerdemo.config import TrainConfig
from flowerdemo.data.dataset import scan_dataset
from flowerdemo.data.tensorcache import decode_samples
from flowerdemo.models import checkpoints
from flowerdemo.models.checkpoints import (
    META,
    WEIGHTS,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from flowerdemo.models.registry import build_model
from flowerdemo.train.evaluate import loss_and_accuracy, predict_tensors


def _meta(model, classes=("a", "b", "c"), **extra) -> dict:
    head = model.head
    kind = "mlp" if len(head) == 4 else "linear"
    return {"architecture": model.spec.name, "classes": list(classes),
            "head": {"kind": kind, "hidden": head[0].out_features if kind == "mlp" else 256,
                     "dropout": head[2].p if kind == "mlp" else head[0].p},
            "preprocessing": model.spec.preprocessing.with_size(64).to_dict(), **extra}


def _trained_like(name: str, **head) -> torch.nn.Module:
    """A model whose weights and BatchNorm statistics differ from any fresh build."""
    torch.manual_seed(1)
    model = build_model(name, 3, pretrained=False, **head)
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 64, 64) * 2 + 0.3)  # moves the running statistics
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name, head", [("efficientnet_lite0", {}),
                                        ("resnet18", {"head": "linear", "dropout": 0.3}),
                                        ("efficientnet_lite0", {"hidden": 32, "dropout": 0.5})])
def test_round_trip_reproduces_logits_exactly(tmp_path, name, head):
    model = _trained_like(name, **head)
    x = torch.randn(3, 3, 64, 64)
    save_checkpoint(tmp_path / "run", model, _meta(model))
    clf = load_checkpoint(tmp_path / "run")
    assert not clf.model.training and clf.classes == ("a", "b", "c")
    loaded = clf.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items()) and loaded.keys() == model.state_dict().keys()
    # load_checkpoint hands out an NHWC (channels_last) model for speed; in the same layout the logits are identical
    model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        before = model(x)
    with torch.no_grad():
        assert torch.equal(clf.model(x), before)
    assert clf.preprocessing == model.spec.preprocessing.with_size(64)
    # the .safetensors file alone is enough too
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "run" / WEIGHTS).model(x), before)


def test_channels_last_model_round_trips(tmp_path):
    model = _trained_like("efficientnet_lite0").to(memory_format=torch.channels_last)  # as fast mode leaves it
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    save_checkpoint(tmp_path / "run", model, _meta(model))
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(tmp_path / "run").model(x), before, atol=1e-5)


def test_half_precision_checkpoint_loads_as_float32(tmp_path):
    model = _trained_like("efficientnet_lite0")
    x = torch.randn(2, 3, 64, 64)
    save_checkpoint(tmp_path / "run", model, _meta(model), half=True)
    clf = load_checkpoint(tmp_path / "run")
    assert clf.meta["weights_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in clf.model.parameters())
    with torch.no_grad():
        assert torch.allclose(clf.model(x).softmax(1), model(x).softmax(1), atol=2e-2)
    assert (tmp_path / "run" / WEIGHTS).stat().st_size < 0.6 * sum(p.numel() * 4 for p in model.parameters())


def test_loading_needs_no_network_and_no_pickle(tmp_path, monkeypatch, trained_run):
    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not use the network or pickle")

    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    clf = load_checkpoint(trained_run.run_dir)
    assert clf.classes == ("circle", "square", "triangle")


def test_engine_checkpoint_describes_itself(trained_run):
    meta = read_meta(trained_run.run_dir)
    assert json.loads((trained_run.run_dir / META).read_text()) == meta  # meta.json = the weights header
    cfg = trained_run.config
    assert meta["format"] == checkpoints.FORMAT and meta["architecture"] == "efficientnet_lite0"
    assert meta["classes"] == ["circle", "square", "triangle"]
    assert meta["head"] == {"kind": "mlp", "hidden": 256, "dropout": 0.2}
    assert meta["preprocessing"]["input_size"] == 96 and meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert TrainConfig.from_dict(meta["config"]) == cfg
    assert meta["mode"] == "fast" and len(meta["history"]) == cfg.epochs
    metrics = meta["metrics"]
    assert {"best_val_acc", "best_epoch", "epochs_run", "accuracy", "macro_f1", "per_class",
            "confusion_matrix"} <= set(metrics)
    assert set(metrics["per_class"]) == set(meta["classes"])
    n_val = next(e for e in trained_run.events if type(e).__name__ == "RunStarted").n_val
    assert sum(map(sum, metrics["confusion_matrix"])) == n_val == 12
    assert {"flowerdemo", "torch", "torchvision", "timm", "python"} <= set(meta["versions"])
    assert meta["versions"]["torch"] == torch.__version__ and isinstance(meta["mistakes"], list)


def test_engine_checkpoint_holds_the_best_weights(trained_run):
    """Re-scoring the validation split with the loaded checkpoint gives the accuracy it claims."""
    clf = load_checkpoint(trained_run.run_dir)
    cfg = trained_run.config
    split = scan_dataset(trained_run.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    val, _ = decode_samples(split.val, clf.preprocessing.resize_size, workers=1)
    p = clf.preprocessing
    logits = predict_tensors(clf.model, val, size=p.input_size, mean=p.mean, std=p.std, device=torch.device("cpu"),
                             autocast=contextlib.nullcontext)
    _, acc = loss_and_accuracy(logits, val.labels)
    assert acc == pytest.approx(clf.meta["metrics"]["best_val_acc"], abs=1.5 / len(val))


def _write(tmp_path, name: str, data: bytes):
    run = tmp_path / name
    run.mkdir()
    (run / WEIGHTS).write_bytes(data)
    return run


def _with_header(tmp_path, name: str, header: dict[str, str]):
    run = tmp_path / name
    run.mkdir()
    save_file({"w": torch.zeros(2)}, str(run / WEIGHTS), metadata=header)
    return run


@pytest.fixture()
def good_run(tmp_path):
    model = _trained_like("efficientnet_lite0")
    return save_checkpoint(tmp_path / "good", model, _meta(model))


def test_bad_checkpoints_give_a_clear_checkpoint_error(tmp_path, good_run):
    valid = read_meta(good_run)
    whole = (good_run / WEIGHTS).read_bytes()
    (tmp_path / "empty").mkdir()
    cases = [
        ("no checkpoint at", tmp_path / "missing"),
        ("expected a run directory", tmp_path / "empty"),
        ("not a readable safetensors", _write(tmp_path, "garbage", b"\x00\x01 definitely not safetensors")),
        ("not a readable safetensors", _write(tmp_path, "truncated", whole[: len(whole) // 2])),
        ("no flowerdemo metadata", _with_header(tmp_path, "foreign", {"format": "pt"})),
        ("unknown checkpoint format", _with_header(tmp_path, "other", {"flowerdemo": json.dumps({**valid, "format": "x"})})),
        ("newer flowerdemo", _with_header(tmp_path, "newer", {"flowerdemo": json.dumps({**valid, "format_version": 99})})),
        ("lacks classes", _with_header(tmp_path, "partial", {"flowerdemo": json.dumps(
            {k: v for k, v in valid.items() if k != "classes"})})),
        ("metadata", _with_header(tmp_path, "badjson", {"flowerdemo": "{not json"})),
        ("metadata", _with_header(tmp_path, "notdict", {"flowerdemo": "[1, 2]"})),
    ]
    for expected, path in cases:
        with pytest.raises(CheckpointError, match=expected) as err:
            load_checkpoint(path)
        assert path.name in str(err.value)  # says which file


def test_weights_that_do_not_fit_the_description_are_refused(tmp_path, good_run):
    meta = read_meta(good_run)
    model = _trained_like("efficientnet_lite0")
    save_checkpoint(tmp_path / "five", model, {**meta, "classes": list("abcde")})  # 3 outputs, 5 classes
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "five")
    save_checkpoint(tmp_path / "arch", model, {**meta, "architecture": "resnet18"})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "arch")
    save_checkpoint(tmp_path / "unknown", model, {**meta, "architecture": "vit_giant"})
    with pytest.raises(CheckpointError, match="vit_giant"):
        load_checkpoint(tmp_path / "unknown")


def test_a_failing_write_leaves_the_previous_checkpoint_intact(tmp_path, good_run, monkeypatch):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = load_checkpoint(good_run).model(x)
    weights_before = (good_run / WEIGHTS).read_bytes()

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", disk_full)
    other = build_model("efficientnet_lite0", 3, pretrained=False)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(good_run, other, _meta(other, classes=("x", "y", "z")))
    assert (good_run / WEIGHTS).read_bytes() == weights_before
    clf = load_checkpoint(good_run)
    assert clf.classes == ("a", "b", "c") and json.loads((good_run / META).read_text())["classes"] == ["a", "b", "c"]
    with torch.no_grad():
        assert torch.equal(clf.model(x), before)


def test_list_checkpoints_newest_first_skipping_broken_ones(tmp_path):
    model = build_model("efficientnet_lite0", 3, pretrained=False)
    old = save_checkpoint(tmp_path / "old", model, _meta(model))
    new = save_checkpoint(tmp_path / "new", model, _meta(model))
    _write(tmp_path, "broken", b"junk")
    (tmp_path / "not-a-run").mkdir()
    now = time.time()
    os.utime(old / WEIGHTS, (now - 100, now - 100))
    assert list_checkpoints(tmp_path) == [new, old]
    assert list_checkpoints(tmp_path / "nowhere") == []
