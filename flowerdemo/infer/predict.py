"""Prediction: class probabilities for one image, with the eval geometry of training. Probabilities are
calibrated: softmax(logits / T) with the checkpoint's temperature (`Classifier.softmax`; T = 1 without one).

The shared model is only read here (inference mode, no hook, no flag changed), so predictions may run
from many threads at once, also while explanations of the same classifier run (they use replicas)."""

from __future__ import annotations

import torch

from flowerdemo.infer.preprocess import prepare_image
from flowerdemo.models.checkpoints import Classifier


@torch.inference_mode()
def probabilities(clf: Classifier, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Calibrated softmax over classes for a prepared batch; `tta` averages the image's and its mirror's
    calibrated probabilities (the temperature was fitted on single views, so each view is scaled by it)."""
    device = next(clf.model.parameters()).device
    x = x.to(device, memory_format=torch.channels_last)  # the layout load_checkpoint gave the model
    probs = clf.softmax(clf.model(x))
    if tta:
        probs = (probs + clf.softmax(clf.model(x.flip(-1)))) / 2
    return probs.cpu()


def predict(clf: Classifier, image, top_k: int | None = None, tta: bool = False) -> dict[str, float]:
    """{class: probability}, most likely first; all classes (summing to 1) unless `top_k` is given."""
    probs = probabilities(clf, prepare_image(image, clf.preprocessing).tensor, tta)[0]
    order = probs.argsort(descending=True).tolist()[: top_k or len(clf.classes)]
    return {clf.classes[i]: float(probs[i]) for i in order}
