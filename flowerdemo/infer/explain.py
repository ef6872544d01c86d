"""Grad-CAM (and friends, from pytorch-grad-cam) on a loaded classifier: where did the model look?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from flowerdemo.infer.preprocess import prepare_image
from flowerdemo.infer.replicas import replica
from flowerdemo.models.checkpoints import Classifier

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "scorecam": ScoreCAM,
               "eigencam": EigenCAM, "layercam": LayerCAM, "xgradcam": XGradCAM}


class ExplainError(ValueError):
    """Unknown CAM method or target class."""


@dataclass
class Explanation:
    heatmap: np.ndarray  # float32 (H, W) in [0, 1] at the (decoded) image size; 0 outside the model's crop
    overlay: Image.Image  # the image with the heatmap blended in, same size
    class_name: str
    class_index: int
    probabilities: dict[str, float]  # all classes (calibrated, as predict's), most likely first
    method: str


def resolve_target(clf: Classifier, target: str | int | None, predicted: int) -> int:
    if target is None or target == "":
        return predicted
    if isinstance(target, str):
        if target not in clf.classes:
            raise ExplainError(f"unknown class {target!r}; this model knows: {', '.join(clf.classes)}")
        return clf.classes.index(target)
    if not 0 <= int(target) < len(clf.classes):
        raise ExplainError(f"class index {target} out of range 0..{len(clf.classes) - 1}")
    return int(target)


def explain(clf: Classifier, image, method: str = "gradcam", target: str | int | None = None,
            alpha: float = 0.5, max_side: int | None = None) -> Explanation:
    """CAM for `target` (default: the predicted class). Safe to call from several threads at once, also
    while `predict` runs on the same classifier: the shared model is only read."""
    if method not in CAM_METHODS:
        raise ExplainError(f"unknown CAM method {method!r}; choose one of: {', '.join(CAM_METHODS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ExplainError(f"alpha (heatmap opacity) must be in [0, 1], got {alpha}")
    chosen = None if target is None or target == "" else resolve_target(clf, target, -1)  # bad names fail first
    # the overlay is drawn on the decoded image: at least twice the model input, or half of max_side
    size = clf.preprocessing.input_size
    prepared = prepare_image(image, clf.preprocessing, max_side=max_side, min_side=max(2 * size, (max_side or 0) // 2))
    # the CAM's hooks and gradients live on a replica that shares the weights, never on the shared model
    # (replicas.py says why): explanations and predictions of one classifier may run in many threads at once
    with replica(clf.model) as model:
        x = prepared.tensor.to(next(model.parameters()).device, memory_format=torch.channels_last)
        with CAM_METHODS[method](model=model, target_layers=[model.target_layer]) as cam:
            if isinstance(cam, ScoreCAM):
                cam.batch_size = 32  # read by ScoreCAM when set (its default is 16 masks per forward)
            # targets=None: the CAM's own forward picks the predicted class, so the image runs once
            targets = None if chosen is None else [ClassifierOutputTarget(chosen)]
            grayscale = cam(input_tensor=x, targets=targets)[0]
            # the logits of that forward (BaseCAM keeps them in every grad-cam >= 1.5.4, our minimum)
            outputs = cam.outputs.detach()
    probs = clf.softmax(outputs)[0].cpu()  # calibrated with the checkpoint's temperature, as in predict
    index = int(probs.argmax()) if chosen is None else chosen
    heatmap = _place(np.nan_to_num(grayscale.astype(np.float32)), prepared.original.size, prepared.box)
    rgb = np.asarray(prepared.original, dtype=np.float32) / 255.0
    overlay = show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=1.0 - alpha)
    order = probs.argsort(descending=True).tolist()
    return Explanation(heatmap, Image.fromarray(overlay), clf.classes[index], index,
                       {clf.classes[i]: float(probs[i]) for i in order}, method)


def _place(cam: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Resize the crop's CAM to the crop box and put it on a zero canvas of the image size."""
    lo, hi = float(cam.min()), float(cam.max())
    cam = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    left, top, right, bottom = box
    patch = Image.fromarray(cam.astype(np.float32), mode="F").resize((right - left, bottom - top),
                                                                     Image.Resampling.BILINEAR)
    canvas = np.zeros((size[1], size[0]), dtype=np.float32)
    canvas[top:bottom, left:right] = np.clip(np.asarray(patch, dtype=np.float32), 0.0, 1.0)
    return canvas


def heatmap_image(heatmap: np.ndarray) -> Image.Image:
    """The raw heatmap as a colour-mapped picture (jet), for display next to the overlay."""
    import cv2

    colored = cv2.applyColorMap(np.uint8(255 * heatmap), cv2.COLORMAP_JET)
    return Image.fromarray(cv2.cvtColor(colored, cv2.COLOR_BGR2RGB))
