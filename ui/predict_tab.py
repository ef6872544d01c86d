"""Predict tab: an image in; class probabilities, a Grad-CAM overlay and the raw heatmap out."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from .errors import log_failure, ui_error
from .state import AppContext

if TYPE_CHECKING:
    from flowerdemo.infer.explain import Explanation

PREDICTED = "(predicted class)"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# the keys of flowerdemo.infer.explain.CAM_METHODS, listed here so that building the UI does not import
# pytorch-grad-cam (seconds); tests/test_app.py checks that the two agree
CAM_NAMES = ["gradcam", "gradcam++", "hirescam", "scorecam", "eigencam", "layercam", "xgradcam"]
MAX_SIDE = 1024  # the overlay is drawn at most this large: big photos stay fast
NO_MODEL = ("### No model yet\nThis server has no trained model to classify with. Either\n"
            "- **train one** in the *Train* tab — pick the built-in flowers or upload a .zip of class folders, "
            "then press Start (a few minutes on a CPU in fast mode), or\n"
            "- **load one from the Hugging Face Hub** in the *Models* tab (a repo id such as `user/flowers-lite0`).")


@dataclass
class PredictRefs:
    """What other tabs need: refresh the model list after a new model arrives."""

    refresh: Callable[..., Any]
    refresh_outputs: list


def describe(meta: dict, path: Path) -> str:
    acc = meta.get("metrics", {}).get("best_val_acc")
    acc = f" · val acc {acc:.1%}" if isinstance(acc, (int, float)) else ""
    return f"{path.name} · {len(meta.get('classes', []))} classes{acc}"


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    from flowerdemo.models.checkpoints import read_meta

    out = []
    for run in ctx.models.runs():
        try:
            out.append((describe(read_meta(run), run), str(run)))
        except (ValueError, OSError):
            continue
    return out


def image_source(payload: Any) -> tuple[Any, str]:
    """(something load_image accepts, a name for messages) from the raw Image payload (preprocess=False)."""
    if isinstance(payload, dict):
        name = payload.get("orig_name") or "the image"
        url = payload.get("url") or ""
        if payload.get("path"):
            return payload["path"], name
        if url.startswith("data:") and "," in url:
            return base64.b64decode(url.split(",", 1)[1]), name
    if isinstance(payload, str):
        return payload, Path(payload).name
    raise gr.Error("Upload an image (JPEG, PNG, WebP, BMP or GIF).")


def build(ctx: AppContext, active: gr.State) -> PredictRefs:
    with gr.Tab("Predict", id="predict"):
        notice = gr.Markdown(NO_MODEL, visible=False, elem_classes="fd-note")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                image = gr.Image(label="Photo", type="filepath", sources=["upload", "webcam", "clipboard"], height=320,
                                 elem_id="predict-image")
                with gr.Row():
                    method = gr.Dropdown(CAM_NAMES, value="gradcam", label="CAM method", scale=2)
                    target = gr.Dropdown([PREDICTED], value=PREDICTED, label="Explain class", scale=2)
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Heatmap opacity")
                model = gr.Dropdown([], label="Active model", info="Checkpoints on this server, newest first")
                button = gr.Button("Classify", variant="primary")
                examples = sorted(p for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[image], label="Examples (drawn, not photos)")
            with gr.Column(scale=5):
                label = gr.Label(num_top_classes=5, label="Class probabilities", elem_id="predict-label")
                with gr.Row():
                    overlay = gr.Image(label="Grad-CAM overlay", type="pil", interactive=False, height=280,
                                       elem_id="predict-overlay")
                    heatmap = gr.Image(label="Heatmap", type="pil", interactive=False, height=280,
                                       elem_id="predict-heatmap")
                timing = gr.Markdown(elem_id="predict-timing")

    def predict(image: Any, method: str = "gradcam", target: str = PREDICTED, alpha: float = 0.5,
                active: str | None = None):
        from flowerdemo.data.images import ACCEPTED, ImageError
        from flowerdemo.infer.explain import explain, heatmap_image

        if image is None:
            return None, None, None, ""
        source, name = image_source(image)
        clf, note = ctx.models.resolve(active)
        if clf is None:
            raise gr.Error("No model is loaded yet: train one in the Train tab or load one from the Hub "
                           "in the Models tab.", title="No model")
        if note:
            gr.Warning(note)
        t0 = time.perf_counter()
        try:
            ex = explain(clf, source, method=method, target=target if target in clf.classes else None,
                         alpha=float(alpha), max_side=MAX_SIDE)
        except ImageError as exc:
            raise ui_error(exc, "Prediction", title="Not a usable image",
                           message=f"{name}: {exc.problem}. Accepted: {ACCEPTED}.") from None
        except Exception as exc:
            raise ui_error(exc, "Prediction", title="Prediction failed") from None
        seconds = time.perf_counter() - t0
        text = summary_text(ex, seconds, str(next(clf.model.parameters()).device), clf.name)
        return ex.probabilities, ex.overlay, heatmap_image(ex.heatmap), text

    gr.on([button.click, image.change, method.change, target.change, alpha.release, active.change], predict,
          [image, method, target, alpha, active], [label, overlay, heatmap, timing], api_name="predict",
          preprocess=False, trigger_mode="always_last")

    def refresh(active: str | None = None):
        """Model list, the visitor's model (else the newest that loads) and its classes; the notice if none."""
        choices = model_choices(ctx)
        clf, note = ctx.models.resolve(active if active in {v for _, v in choices} else None)
        current = str(clf.path) if clf is not None else None
        classes = list(clf.classes) if clf is not None else []
        return (gr.update(choices=choices, value=current), gr.update(choices=[PREDICTED, *classes], value=PREDICTED),
                gr.update(visible=clf is None), current)

    refresh_outputs = [model, target, notice, active]

    def select(path: str | None, active: str | None = None):
        if not path or path == active:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            clf = ctx.models.get(path)
        except Exception as exc:
            shown = exc if log_failure(exc, "Loading the chosen model") else "an error in the server"
            gr.Warning(f"That checkpoint does not load: {shown}. Keeping the current model.")
            return gr.skip(), gr.skip(), gr.update(value=active)
        return path, gr.update(choices=[PREDICTED, *clf.classes], value=PREDICTED), gr.skip()

    model.input(select, [model, active], [active, target, model], api_name="select_model")
    return PredictRefs(refresh, refresh_outputs)


def summary_text(ex: Explanation, seconds: float, device: str, model_name: str) -> str:
    """The markdown line under a prediction; says so when the heatmap is empty (Grad-CAM found no
    region that raises the class score, which happens when the model is unsure)."""
    top, p = next(iter(ex.probabilities.items()))
    text = (f"**{top}** ({p:.1%}) · {ex.method} for *{ex.class_name}* · {seconds * 1000:.0f} ms on "
            f"{device} · model `{model_name}`")
    if not float(ex.heatmap.max()) > 0:
        text += (f"\n\nThe heatmap is empty: no region raises the score of *{ex.class_name}* (all the "
                 f"evidence {ex.method} found is negative, common when the model is unsure). Try another class "
                 f"or method.")
    return text
