"""Grad-CAM (and friends, from pytorch-grad-cam) on a loaded classifier: where did the model look?"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from flowerdemo.device import COMPUTE
from flowerdemo.infer.batching import STAGES, batcher_for
from flowerdemo.infer.cam_times import CAM_NAMES
from flowerdemo.infer.faithfulness import Faithfulness, check_faithfulness
from flowerdemo.infer.preprocess import PreparedImage, prepare_image
from flowerdemo.infer.replicas import gradients_at, replica
from flowerdemo.models.checkpoints import Classifier

if TYPE_CHECKING:
    from flowerdemo.infer.predict import Prediction


class BoundedScoreCAM(ScoreCAM):
    """ScoreCAM that scores only the `channels` target-layer channels with the highest mean activation.

    ScoreCAM runs the model once per channel of the target layer, each time on the image masked by that
    channel's upsampled map: 1,280 forwards for the Lite backbones, about a minute on 2 CPU cores. Channels
    that are barely active give near-empty masks and scores close to each other, so their softmax weights
    are near-uniform and small; scoring only the most active ones keeps what shapes the map. The others
    get weight 0. All scored masks go through the model in batches of `batch_size`."""

    channels = 32  # close to the full map, a few times the cost of Grad-CAM (docs/benchmarks.md §5)
    batch_size = 32  # one forward for all of them

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        with torch.no_grad():
            acts = torch.from_numpy(activations).to(self.device)
            weights = torch.zeros(acts.shape[:2])
            for b, (target, act, image) in enumerate(zip(targets, acts, input_tensor, strict=True)):
                top = act.mean((1, 2)).topk(min(self.channels, act.shape[0])).indices
                # as the library's ScoreCAM: bilinear upsampling (corners aligned), each map scaled to [0, 1]
                maps = torch.nn.functional.interpolate(act[top][None], size=input_tensor.shape[-2:], mode="bilinear",
                                                       align_corners=True)[0]
                lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
                maps = (maps - lo) / (hi - lo + 1e-8)
                scores = [target(o).float().cpu()
                          for i in range(0, len(top), self.batch_size)
                          for o in self.model(image[None] * maps[i:i + self.batch_size, None])]
                weights[b, top.cpu()] = torch.stack(scores).softmax(0)
            return weights.numpy()


# the names (and their order in the UI) are cam_times.CAM_NAMES': one list for the core and the UI
CAM_METHODS = dict(zip(CAM_NAMES, (GradCAM, GradCAMPlusPlus, HiResCAM, BoundedScoreCAM, EigenCAM, LayerCAM, XGradCAM),
                       strict=True))
DEFAULT_CAM = "gradcam"  # for a model without a measured ranking (best_cam_method)

CROP_NOTE = ("The model sees only the square marked on the photo; the parts outside it were not used, "
             "so the heatmap is blank there.")


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
    faithfulness: Faithfulness | None = None  # explain(check=True): does removing the highlighted part matter?
    crop_note: str | None = None  # set when the model's square (outlined on the overlay) leaves part of the photo out
    cam: np.ndarray | None = None  # float32 (S, S): the CAM on the model's input, what `check_explanation` needs


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


def prepare_for_explain(clf: Classifier, image, max_side: int | None = None) -> PreparedImage:
    """The image as `explain` needs it (the overlay is drawn on the decoded image: at least twice the model
    input, or half of `max_side`, decoded at the coarsest JPEG scale that gives that). `classify` accepts
    it too (`prepared=`), so a caller that wants both decodes the photo once."""
    size = clf.preprocessing.input_size
    return prepare_image(image, clf.preprocessing, max_side=max_side, min_side=max(2 * size, (max_side or 0) // 2))


def explain(clf: Classifier, image=None, method: str = "gradcam", target: str | int | None = None,
            alpha: float = 0.5, max_side: int | None = None, check: bool = False,
            prepared: PreparedImage | None = None, answered: Prediction | None = None) -> Explanation:
    """CAM for `target` (default: the predicted class). Safe to call from several threads at once, also
    while `predict` runs on the same classifier: the shared model is only read. `check` adds a
    faithfulness check (infer/faithfulness.py: one more batched forward of a few images). `prepared`
    (from `prepare_for_explain`) replaces `image` and `max_side`: the photo is not decoded again. `answered`:
    `classify`'s answer for that same `prepared` image; a Grad-CAM reuses its forward (no forward of its own)."""
    if method not in CAM_METHODS:
        raise ExplainError(f"unknown CAM method {method!r}; choose one of: {', '.join(CAM_METHODS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ExplainError(f"alpha (heatmap opacity) must be in [0, 1], got {alpha}")
    chosen = None if target is None or target == "" else resolve_target(clf, target, -1)  # bad names fail first
    if prepared is None:
        prepared = prepare_for_explain(clf, image, max_side)
    # the CAM's hooks and gradients live on a replica that shares the weights, never on the shared model
    # (replicas.py says why): explanations and predictions of one classifier may run in many threads at once;
    # the forward and backward get their share of the cores while others run (device.ComputeShare)
    with STAGES.turn(STAGES.HEATMAP):  # other requests' answers first (a visitor waits for those); a few at a time
        grayscale, outputs = _cam(clf, prepared, method, chosen, answered.forward if answered is not None else None)
    probs = clf.softmax(outputs)[0].cpu()  # calibrated with the checkpoint's temperature, as in predict
    index = int(probs.argmax()) if chosen is None else chosen
    grayscale = np.nan_to_num(grayscale.astype(np.float32))
    heatmap = _place(grayscale, prepared.original.size, prepared.box)
    overlay = overlay_image(prepared.original, heatmap_image(heatmap), alpha, prepared.box)
    cropped = prepared.box != (0, 0, *prepared.original.size)
    order = probs.argsort(descending=True).tolist()
    ex = Explanation(heatmap, overlay, clf.classes[index], index, {clf.classes[i]: float(probs[i]) for i in order},
                     method, None, CROP_NOTE if cropped else None, grayscale)
    return check_explanation(clf, ex, prepared) if check else ex


def _cam(clf: Classifier, prepared: PreparedImage, method: str, chosen: int | None,
         forward: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """(grayscale CAM at the model input, the logits of its forward): Grad-CAM from the onnxruntime twin's
    maps where there is one (`_fast_gradcam`), else computed with pytorch-grad-cam on a borrowed replica."""
    if method == "gradcam":
        fast = _fast_gradcam(clf, prepared.tensor, chosen, forward)
        if fast is not None:
            return fast
    with replica(clf.model) as model, COMPUTE.share(), gradients_at(model, model.target_layer):
        x = prepared.tensor.to(next(model.parameters()).device, memory_format=torch.channels_last)
        with CAM_METHODS[method](model=model, target_layers=[model.target_layer]) as cam:
            # targets=None: the CAM's own forward picks the predicted class, so the image runs once
            targets = None if chosen is None else [ClassifierOutputTarget(chosen)]
            grayscale = cam(input_tensor=x, targets=targets)[0]
            # the logits of that forward (BaseCAM keeps them in every grad-cam >= 1.5.4, our minimum)
            return grayscale, cam.outputs.detach()


def _fast_gradcam(clf: Classifier, x: torch.Tensor, chosen: int | None,
                  forward: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, torch.Tensor] | None:
    """Grad-CAM without a torch forward of the backbone: the onnxruntime twin (infer/runtime.py) gives the
    logits and the target layer's maps in one forward, batched with other requests' heatmaps; only the
    layers after the target layer (pooling and head) are differentiated, in torch, to get the gradients at
    the maps. The same numbers as pytorch-grad-cam's GradCAM (its weighting and scaling, reused;
    tests/test_runtime.py: within 1e-4). None where the model has no twin (yet), or its layers after the
    target layer are not a `forward_head` (timm backbones have one: all the bundled ones). `forward`: the
    (logits, maps) of the twin's forward of `x` when the caller has them (classify's answer): none is run."""
    from flowerdemo.infer.predict import _maps_layer, twin_of

    if _maps_layer(clf.model) is None:
        return None
    twin = twin_of(clf) if forward is None else None
    if forward is None and (twin is None or not twin.with_maps):
        return None
    logits, maps = forward if forward is not None else batcher_for(clf.model, "cam")(twin, x.cpu())
    index = int(logits[0].argmax()) if chosen is None else chosen
    acts = maps.clone().requires_grad_(True)
    with torch.enable_grad(), COMPUTE.share():  # reads the shared head; gradients only at `acts`
        score = clf.model.head(clf.model.backbone.forward_head(acts.to(next(clf.model.parameters()).dtype)))
        (grads,) = torch.autograd.grad(score[:, index].sum(), acts)
    # pytorch-grad-cam's GradCAM: channel weights = mean gradient; ReLU of the weighted sum; scaled to [0, 1]
    # at the input size (compute_cam_per_layer), then again over the one layer (aggregate_multi_layers)
    a, g = maps.numpy(), grads.numpy()
    cam = np.maximum((g.mean(axis=(2, 3))[:, :, None, None] * a).sum(axis=1), 0)
    cam = scale_cam_image(cam, (x.shape[-1], x.shape[-2]))
    return scale_cam_image(np.maximum(cam, 0))[0], logits


def check_explanation(clf: Classifier, ex: Explanation, prepared: PreparedImage) -> Explanation:
    """`ex` with its faithfulness check (what explain(check=True) adds), for a caller that shows the heatmap
    before the check is done. `prepared` is the image `ex` was computed from."""
    if ex.cam is None:
        raise ExplainError("this explanation has no CAM at the model's input to check")
    with STAGES.turn(STAGES.CHECK, timeout=20.0):  # other requests' answers and heatmaps first
        # the CAM's own forward already scored the unchanged photo: the check does not run it again
        before = ex.probabilities.get(ex.class_name)
        return replace(ex, faithfulness=check_faithfulness(clf, prepared.tensor, ex.cam, ex.class_index, before=before))


def best_cam_method(meta: Mapping[str, Any] | None) -> str:
    """The model's best CAM method: the first known name in `meta["cam_ranking"]` (best first, as measured by
    benchmarks/cam_faithfulness.py), else DEFAULT_CAM."""
    ranking = (meta or {}).get("cam_ranking")
    if isinstance(ranking, list | tuple):
        for name in ranking:
            if isinstance(name, str) and name in CAM_METHODS:
                return name
    return DEFAULT_CAM


def _outline(image: Image.Image, box: tuple[int, int, int, int]) -> None:
    """A thin white line just outside `box`, edged in black so it shows on light and dark photos alike."""
    width = max(2, round(min(image.size) / 300))
    left, top, right, bottom = box
    draw = ImageDraw.Draw(image)
    for grow, colour, w in ((width + 1, (0, 0, 0), 1), (width, (255, 255, 255), width)):
        draw.rectangle((left - grow, top - grow, right - 1 + grow, bottom - 1 + grow), outline=colour, width=w)


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


def overlay_image(original: Image.Image, colored: Image.Image, alpha: float,
                  box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """The photo with a colour-mapped heatmap (`heatmap_image`, the same size) blended in at opacity `alpha`, as
    pytorch-grad-cam's show_cam_on_image does it, and the model's crop outlined when it is not the whole photo."""
    if not 0.0 <= alpha <= 1.0:
        raise ExplainError(f"alpha (heatmap opacity) must be in [0, 1], got {alpha}")
    rgb = np.asarray(original.convert("RGB"), dtype=np.float32) / 255.0
    heat = np.asarray(colored.convert("RGB"), dtype=np.float32) / 255.0
    cam = alpha * heat + (1.0 - alpha) * rgb
    overlay = Image.fromarray(np.uint8(255 * cam / max(float(cam.max()), 1e-6)))
    if box is not None and box != (0, 0, *original.size):  # the heatmap stops at the crop: show where, so
        _outline(overlay, box)  # its edge is not read as the model's doing
    return overlay


def reblend(clf: Classifier, image, colored: Image.Image, alpha: float, max_side: int | None = None) -> Image.Image | None:
    """A new overlay at opacity `alpha` from the photo and its colour-mapped heatmap as shown (no model run: what
    moving the opacity costs is one decode); None when the heatmap is not that photo's at `max_side` (its size
    differs: the photo changed meanwhile)."""
    prepared = prepare_for_explain(clf, image, max_side)
    if colored.size != prepared.original.size:
        return None
    return overlay_image(prepared.original, colored, alpha, prepared.box)


def heatmap_image(heatmap: np.ndarray) -> Image.Image:
    """The raw heatmap as a colour-mapped picture (jet), for display next to the overlay."""
    import cv2

    colored = cv2.applyColorMap(np.uint8(255 * heatmap), cv2.COLORMAP_JET)
    return Image.fromarray(cv2.cvtColor(colored, cv2.COLOR_BGR2RGB))
