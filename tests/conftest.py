"""Shared fixtures: a private feature cache for every test, and one small model trained once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from flowerdemo.config import TrainConfig
from tests.synth import make_dataset

# Fast mode (cached trunk activations; last stage + head trained) at 96 px: big enough for a 3x3 Grad-CAM grid, so a
# quadrant can be told apart; 12 epochs on 2 cached views take a few seconds on 2 cores.
TRAINED_CONFIG = TrainConfig(mode="fast", image_size=96, epochs=12, batch_size=16, fast_views=2, workers=1, seed=0)


@dataclass(frozen=True)
class TrainedRun:
    data: Path  # the synthetic ImageFolder it was trained on (20 images per class, 96 px)
    run_dir: Path  # the checkpoint written by the engine
    events: tuple  # every event the engine yielded, in order
    config: TrainConfig


@pytest.fixture(scope="session", autouse=True)
def _session_temp_dir(tmp_path_factory):
    """The temp dir is pytest's base temp: gradio_client leaves an empty folder in the temp dir for every file it
    downloads (it moves the file out, not its folder), ~60,000 of them in /tmp after a day of test runs. Not a
    folder beside the tests' own: an in-process app's pictures under tmp_path must stay inside the temp dir, where
    Gradio accepts them."""
    import tempfile

    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.getbasetemp())
    yield
    tempfile.tempdir = before


@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path_factory, monkeypatch):
    """Fast mode caches features under $FLOWERDEMO_CACHE: never in the home directory during tests."""
    monkeypatch.setenv("FLOWERDEMO_CACHE", str(tmp_path_factory.mktemp("flowerdemo-cache")))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """One fast-mode EfficientNet-Lite0 (bundled ImageNet weights) trained on synthetic shapes, shared by
    the prediction, explanation, checkpoint and CLI tests."""
    from flowerdemo.train.engine import train

    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "data", per_class=20, size=96)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWERDEMO_CACHE", str(root / "cache"))
        events = tuple(train(TRAINED_CONFIG, data, out_dir=root / "checkpoints"))
    return TrainedRun(data, events[-1].run_dir, events, TRAINED_CONFIG)
