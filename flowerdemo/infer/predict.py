"""Prediction: class probabilities for one image, with the eval geometry of training. Probabilities are
calibrated: softmax(logits / T) with the checkpoint's temperature (`Classifier.softmax`; T = 1 without one).

The shared model is only read here (inference mode, no hook, no flag changed), so predictions may run
from many threads at once, also while explanations of the same classifier run (they use replicas).
Concurrent forwards of one model are stacked into one (infer/batching.py): a server's visitors share them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from flowerdemo.device import COMPUTE
from flowerdemo.infer.batching import STAGES, batcher_for
from flowerdemo.infer.preprocess import PreparedImage, prepare_image
from flowerdemo.infer.runtime import fast_forward
from flowerdemo.models.checkpoints import Classifier
from flowerdemo.models.unknown import (
    DEFAULT_STRICTNESS,
    REFERENCE_SIZE,
    Familiarity,
    check_strictness,
    reference_encoder,
    reference_input,
)


@dataclass(frozen=True)
class Prediction:
    """One image's answer: calibrated probabilities (all classes, most likely first) and whether the photo
    looks like the model's training photos at all (`familiarity.known`: False = "none of these", None =
    no detector or strictness "off")."""

    probabilities: dict[str, float]
    familiarity: Familiarity
    # (logits, CAM target-layer maps) of the forward that gave the answer, when it ran on the onnxruntime twin:
    # explain(answered=...) draws its Grad-CAM from them without another forward
    forward: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def top(self) -> tuple[str, float]:
        return next(iter(self.probabilities.items()))

    @property
    def rejected(self) -> bool:
        return self.familiarity.known is False

    def to_dict(self) -> dict[str, Any]:
        return {"probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
                "label": None if self.rejected else self.top[0], **self.familiarity.to_dict()}


def _forward(model: torch.nn.Module):
    """model(x) under inference mode with this forward's share of the cores (device.ComputeShare)."""
    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        with COMPUTE.share():
            return model(x)
    return run


def model_forward(clf: Classifier):
    """The classifier's logits for a batch: its onnxruntime twin once built (infer/runtime.py: CPU, about twice
    as fast; it also gives the CAM's maps), torch until then and wherever there is none."""
    return _logits(clf.model, twin_of(clf))


def _logits(model: torch.nn.Module, twin) -> Any:
    """A batch -> logits function: the twin's first output, or the torch model's forward."""
    return (lambda x: twin(x)[0]) if twin is not None else _forward(model)


def twin_of(clf: Classifier):
    """The classifier's onnxruntime twin with the CAM's maps (infer/runtime.py), or None (not (yet) built)."""
    return fast_forward(clf.model, clf.preprocessing.input_size, _maps_layer(clf.model))


def _maps_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    """The CAM's target layer, for models whose layers after it the fast Grad-CAM can differentiate alone."""
    return model.target_layer if hasattr(getattr(model, "backbone", None), "forward_head") else None


@torch.inference_mode()
def probabilities(clf: Classifier, x: torch.Tensor, tta: bool = False, queue: str = "logits") -> torch.Tensor:
    """Calibrated softmax over classes for a prepared batch; `tta` averages the image's and its mirror's
    calibrated probabilities (the temperature was fitted on single views, so each view is scaled by it).
    Concurrent calls on one model with the same `queue` run as one batched forward; a lone call runs its own
    batch as is. Heatmap checks use their own queue, so that answers never wait in a batch behind them."""
    device = next(clf.model.parameters()).device
    x = x.to(device, memory_format=torch.channels_last)  # the layout load_checkpoint gave the model
    logits = batcher_for(clf.model, queue)
    forward = model_forward(clf)
    probs = clf.softmax(logits(forward, x))
    if tta:
        probs = (probs + clf.softmax(logits(forward, x.flip(-1)))) / 2
    return probs.cpu()


def familiarity(clf: Classifier, x: torch.Tensor, strictness: str = DEFAULT_STRICTNESS) -> list[Familiarity]:
    """For each image of a prepared batch: is it like the photos the model was trained on? (one forward of
    the small reference encoder, batched with concurrent calls; read-only, thread-safe)"""
    check_strictness(strictness)
    if clf.detector is None:
        return [Familiarity(None, None, None, strictness, False) for _ in range(len(x))]
    device = next(clf.model.parameters()).device
    encoder = reference_encoder(device)
    with torch.inference_mode():  # models.unknown.reference_features, with the encoder's forward batched
        r = reference_input(x.to(device), clf.preprocessing.mean, clf.preprocessing.std)
        forward = _logits(encoder, fast_forward(encoder, r.shape[-1]))
        feats = batcher_for(encoder, "features")(forward, r).float().cpu()
    return clf.detector.decide(feats, strictness)


def classify(clf: Classifier, image=None, tta: bool = False, strictness: str = DEFAULT_STRICTNESS,
             prepared: PreparedImage | None = None) -> Prediction:
    """Probabilities of every class and the unknown-photo decision for one image. `prepared`: the image
    already decoded and cropped (prepare_image), e.g. shared with `explain`, so it is decoded once."""
    check_strictness(strictness)
    x = (prepared if prepared is not None else prepare_image(image, clf.preprocessing)).tensor
    twin, forward = (None if tta else twin_of(clf)), None
    with STAGES.running(STAGES.ANSWER):  # explanations and checks let it pass (batching.Stages)
        if twin is not None and twin.with_maps:  # its own queue: every caller of it runs the twin (tuples)
            forward = batcher_for(clf.model, "answers")(twin, x)
            probs = clf.softmax(forward[0])[0]
        else:
            probs = probabilities(clf, x, tta)[0]
        known = familiarity(clf, x, strictness)[0]
    order = probs.argsort(descending=True).tolist()
    return Prediction({clf.classes[i]: float(probs[i]) for i in order}, known, forward)


def predict(clf: Classifier, image, top_k: int | None = None, tta: bool = False) -> dict[str, float]:
    """{class: probability}, most likely first; all classes (summing to 1) unless `top_k` is given."""
    probs = probabilities(clf, prepare_image(image, clf.preprocessing).tensor, tta)[0]
    order = probs.argsort(descending=True).tolist()[: top_k or len(clf.classes)]
    return {clf.classes[i]: float(probs[i]) for i in order}


def warm_up(clf: Classifier) -> None:
    """Build now what the first requests would otherwise wait for or run without: the onnxruntime twins of the
    model and of the reference encoder (infer/runtime.py, ~2.5 s each) and one answer. For a server's
    start-up, in a thread of its own (the app listens meanwhile; requests until then run on torch)."""
    fast_forward(clf.model, clf.preprocessing.input_size, _maps_layer(clf.model), wait=True)
    if clf.detector is not None:
        fast_forward(reference_encoder(next(clf.model.parameters()).device), REFERENCE_SIZE, wait=True)
    size = clf.preprocessing.input_size
    classify(clf, prepared=None, image=_blank(size))


def _blank(size: int):
    from PIL import Image

    return Image.new("RGB", (size, size), (128, 128, 128))
