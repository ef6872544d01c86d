"""Predict tab: an image in; first the answer (class probabilities, or "not one of the N classes this model
knows" when the unknown-photo detector rejects the photo), then the Grad-CAM overlay and the raw heatmap
with a check of how faithful the heatmap is (streamed: a slow CAM method never hides the answer)."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from flowerdemo.data.builder import md
from flowerdemo.data.check import TINY_SIDE
from flowerdemo.infer.cam_times import CAM_NAMES, CAM_SECONDS

from .errors import log_failure, ui_error
from .state import IMAGES_FOLDER, AppContext, SessionMap

if TYPE_CHECKING:
    from flowerdemo.infer.explain import Explanation

PREDICTED = "(predicted class)"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# the overlay and heatmap are drawn at most this large, the display size (the images show 280 px high, 800 px
# leaves room for a zoom), and sent as JPEG: ~3 ms to encode at this size, where Gradio's default WebP took
# ~140 ms for the two at 1000x750 (docs/benchmarks.md)
MAX_SIDE = 800
# /predict requests in flight: enough that a burst of visitors all get their answer in the first batched forwards
# (infer/batching.py) instead of queueing behind earlier visitors' heatmaps; CAMs wait for a replica (at most 4)
PREDICT_CONCURRENCY = 64
# the keys of flowerdemo.models.unknown.STRICTNESS plus "off" (tests/test_app.py checks that they agree)
STRICTNESS_CHOICES = [("Strict (accepts 90% of real photos of its classes)", "strict"),
                      ("Normal (95%)", "normal"), ("Lenient (99%)", "lenient"), ("Off (always answer a class)", "off")]
NO_PHOTO = "Upload a photo, take one with the webcam or pick an example: it is classified at once."
NO_MODEL = ("### No model yet\nThis server has no trained model to classify with. Either\n"
            "- **train one** in the *Train* tab — pick the built-in flowers or upload a .zip of class folders, "
            "then press Start (a few minutes on a CPU in fast mode), or\n"
            "- **load one from the Hugging Face Hub** in the *Models* tab (a repo id such as `user/flowers-lite0`).")


MIN_SHOWN = 256  # px: the long side a tiny photo's overlay and heatmap are enlarged to (whole multiples)


class ImageFiles:
    """A request's output pictures as JPEG files of its own, handed to Gradio as paths.

    Not as PIL images: Gradio names an encoded image by the hash of its bytes and rewrites that file on every
    output (truncate, then write), so two visitors whose heatmaps are identical (the same example photo at the
    same moment) could download it while it was empty: 2-5 of 50 simultaneous identical requests failed so
    (benchmarks/serving.py). A path is copied into Gradio's cache under a temporary name and renamed, and an
    existing copy is never rewritten."""

    def __init__(self, folder: Path) -> None:
        import tempfile

        folder.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="request-", dir=folder))
        self.count = 0

    def write(self, image) -> str:
        self.count += 1
        path = self.dir / f"image-{self.count}.jpg"
        image = image.convert("RGB")
        # a 20x20 photo's heatmap was drawn 20 px wide: a tiny one's pictures are enlarged, pixels kept sharp (a photo
        # of a usable size keeps its own size: API clients lay the overlay over their photo)
        if max(image.size) < TINY_SIDE:
            scale = -(-MIN_SHOWN // max(image.size))
            image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        image.save(path, "JPEG", quality=85)
        return str(path)

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def photo_key(image: Any) -> Any:
    """What tells one uploaded photo from another: its upload's path (a new path for every upload), else a
    digest of an inline picture; None when neither is known."""
    if isinstance(image, dict):
        if image.get("path"):
            return image["path"]
        url = image.get("url") or ""
        return hashlib.sha1(url.encode()).hexdigest() if url.startswith("data:") else None
    return image if isinstance(image, str) else None


@dataclass
class PredictRefs:
    """What other tabs need: refresh the model list after a new model arrives."""

    refresh: Callable[..., Any]
    refresh_outputs: list


def describe(meta: dict, path: Path, whose: str = "") -> str:
    """A dropdown label: whose it is (default / yours / shared), its name, classes and accuracy."""
    from flowerdemo.serve.owners import display_name

    acc = meta.get("metrics", {}).get("best_val_acc")
    acc = f" · val acc {acc:.1%}" if isinstance(acc, (int, float)) else ""
    return f"{whose + ' · ' if whose else ''}{display_name(path)} · {len(meta.get('classes', []))} classes{acc}"


def model_choices(ctx: AppContext, identity: str = "anonymous", active: str | None = None) -> list[tuple[str, str]]:
    """The models this visitor may pick: the default first, then theirs, the operator's (and everyone's
    when the operator shares all runs), newest first, and the active one if it came by a share code."""
    from flowerdemo.models.checkpoints import read_meta
    from flowerdemo.serve.owners import owner_key, read_owner, visible_runs

    default = ctx.models.default.resolve() if ctx.models.default is not None else None
    runs = [(run.resolve(), record) for run, record in
            visible_runs(ctx.settings.checkpoint_dir, identity, ctx.settings.share_runs)]
    listed = {run for run, _ in runs}
    if default is not None and default not in listed:  # named outside the checkpoint folder
        runs.append((default, None))
    if active and Path(active).is_dir() and Path(active).resolve() not in listed | {default}:
        runs.append((Path(active).resolve(), read_owner(active)))  # only server code sets `active`
    runs.sort(key=lambda r: r[0] != default)  # stable: the default first, the rest newest first
    out, key = [], owner_key(identity)
    for run, record in runs:
        whose = ("default" if run == default else "" if record is None else
                 "yours" if record.owner == key else "shared")
        try:
            out.append((describe(read_meta(run), run, whose), str(run)))
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
    raise gr.Error("Upload an image (JPEG, PNG, WebP, BMP or GIF).", title="Not a photo", print_exception=False)


def example_files() -> tuple[list[list[str]], list[str]]:
    """The gallery: drawings made for this app, and real non-flower photos that installed packages ship
    (not copied into the repo), to show the "not one of these classes" answer."""
    files, labels = [], []
    for p in sorted(q for q in EXAMPLES_DIR.glob("*") if q.suffix.lower() in (".png", ".jpg", ".jpeg")):
        files.append([str(p)])
        labels.append(f"Drawing of a {p.stem} (not a photo)")
    for path, label in package_photos():
        files.append([str(path)])
        labels.append(label)
    return files, labels


def package_photos() -> list[tuple[Path, str]]:
    """Photos from installed packages with their credit: Matplotlib's Grace Hopper portrait (public
    domain, US Navy) and scikit-learn's pagoda (CC BY 2.0, danielbuechele on Flickr)."""
    out = []
    for module, rel, label in (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
                                "Photo: a portrait (Grace Hopper, public domain) — not a flower"),
                               ("sklearn", "datasets/images/china.jpg",
                                "Photo: a pagoda (CC BY 2.0, danielbuechele) — not a flower")):
        try:
            import importlib.util

            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec and spec.origin and (Path(spec.origin).parent / rel).is_file():
            out.append((Path(spec.origin).parent / rel, label))
    return out


def known_classes_text(clf) -> str:
    """Which classes the active model knows, and whether it can say "none of these"."""
    if clf is None:
        return ""
    from flowerdemo.models.unknown import UNAVAILABLE_NOTE

    # names as typed: a shared or uploaded model's class names reach other visitors' pages (no HTML through them)
    text = f"This model knows **{len(clf.classes)} classes**: {', '.join(md(c) for c in clf.classes)}."
    if clf.detector is None:
        return text + f"\n\n*{UNAVAILABLE_NOTE}*"
    text += " Photos of anything else are answered \"not one of these\"."
    if len({round(t, 6) for t in clf.detector.thresholds.values()}) == 1:  # few validation photos to fit them on
        text += (" *For this model the three strictness levels are the same: it had too few validation photos to "
                 "tell them apart.*")
    return text


def verdict_text(pred, classes: tuple[str, ...]) -> str:
    """The headline: the class, or "Not one of the N classes this model knows" with the class list."""
    f = pred.familiarity
    top, p = pred.top
    if f.known is False:
        return (f"## Not one of the {len(classes)} classes this model knows\n"
                f"This photo does not look like the photos the model learned from ({', '.join(md(c) for c in classes)}), so it "
                f"gives no class. The probabilities below are what it would have said if forced to choose; they "
                f"mean little here. *(unknown-photo score {f.score:.2f} > threshold {f.threshold:.2f}, "
                f"{f.strictness})*")
    text = f"## {md(top)} · {p:.0%}"
    if f.known:
        text += f"\nLooks like the photos it learned from *(score {f.score:.2f} ≤ {f.threshold:.2f}, {f.strictness})*."
    elif not f.available:
        text += "\n*This model cannot tell when a photo is none of its classes.*"
    else:
        text += "\n*The unknown-photo check is off: every photo gets one of the classes.*"
    return text


def build(ctx: AppContext, active: gr.State) -> PredictRefs:
    with gr.Tab("Predict", id="predict"):
        notice = gr.Markdown(NO_MODEL, visible=False, elem_classes="fd-note")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                image = gr.Image(label="Photo", type="filepath", sources=["upload", "webcam", "clipboard"], height=320,
                                 elem_id="predict-image")
                known = gr.Markdown(elem_id="predict-classes")
                strictness = gr.Radio(STRICTNESS_CHOICES, value="normal", label="Say \"none of these\"",
                                      info="How readily a photo is called none of the model's classes",
                                      elem_id="predict-strictness")
                with gr.Row():
                    # min_width: side by side on a desktop, one per line on a phone (else both labels were cut)
                    method = gr.Dropdown(cam_choices(), value="gradcam", label="CAM method (time on an idle server)", scale=2,
                                         min_width=220, elem_id="predict-method")
                    target = gr.Dropdown([PREDICTED], value=PREDICTED, label="Explain class", scale=2, min_width=220,
                                         elem_id="predict-target")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Heatmap opacity", elem_id="predict-alpha")
                model = gr.Dropdown([], label="Active model", elem_id="predict-model",
                                    info="The server's default model first, then yours (and shared ones)")
                button = gr.Button("Classify", variant="primary")
                files, labels = example_files()
                examples = gr.Examples(files, inputs=[image], label="Examples: drawings, and real photos that are not "
                                       "flowers", example_labels=labels) if files else None
            with gr.Column(scale=5):
                verdict = gr.Markdown(elem_id="predict-verdict")
                label = gr.Label(num_top_classes=5, label="Class probabilities", elem_id="predict-label")
                with gr.Row():
                    overlay = gr.Image(label="Grad-CAM overlay", type="pil", interactive=False, height=280,
                                       format="jpeg", elem_id="predict-overlay")
                    heatmap = gr.Image(label="Heatmap", type="pil", interactive=False, height=280,
                                       format="jpeg", elem_id="predict-heatmap")
                timing = gr.Markdown(NO_PHOTO, elem_id="predict-timing")
                with gr.Accordion("Details (JSON)", open=False):
                    details = gr.JSON(label="Answer", elem_id="predict-details")

    # per browser session, what its page shows: the key of the last prediction that ran to its end
    shown_last = SessionMap()

    def predict(image: Any, method: str = "gradcam", target: str = PREDICTED, alpha: float = 0.5,
                active: str | None = None, strictness: str = "normal", event: gr.EventData = None,
                request: gr.Request = None):
        """Streams three times: the answer (probabilities + unknown-photo verdict), the heatmap, then its check."""
        from flowerdemo.data.images import ACCEPTED, ImageError
        from flowerdemo.infer.batching import STAGES
        from flowerdemo.infer.explain import check_explanation, explain, heatmap_image, prepare_for_explain
        from flowerdemo.infer.predict import classify
        from flowerdemo.infer.preprocess import photo_note

        if image is None:
            if getattr(event, "target", None) is button:  # pressed: a toast too, since on a phone the text
                # below lands far above the button, out of sight
                gr.Warning("There is no photo yet: upload one, take one with the webcam or pick an example below, "
                           "and it is classified at once.")
            yield None, None, None, NO_PHOTO, "", None, gr.skip()
            return
        source, name = image_source(image)
        if getattr(event, "target", None) is image_box:  # a new photo: its own answer explained (image.input below)
            target = PREDICTED
        clf, note = ctx.models.resolve(active)
        if clf is None:
            raise gr.Error("No model is loaded yet: train one in the Train tab or load one from the Hub "
                           "in the Models tab.", title="No model", print_exception=False)
        # a model gone since the visitor picked it (deleted by its owner, pruned, no longer loading): said once, and
        # the visitor's model becomes the default (active.change: the browser forgets it, the tabs show the default)
        forget = gr.skip()
        if note:
            gr.Warning(note)
            forget = None
        if strictness not in {v for _, v in STRICTNESS_CHOICES}:
            raise gr.Error(f"Unknown strictness {strictness!r}; choose one of: "
                           f"{', '.join(v for _, v in STRICTNESS_CHOICES)}.", title="Bad option", print_exception=False)
        # a browser's event that would compute exactly what its page already shows is skipped: after a prediction
        # that found the visitor's model gone and set it to the default, Gradio ran the photo's event once more
        # (deferred behind the running one), the same photo with the same default model (a walkthrough). Never for
        # the Classify button or an API call (no trigger), and the shown answer is forgotten when a run starts
        session, trigger = getattr(request, "session_hash", None), getattr(event, "target", None)
        key = (photo_key(image), method, target, opacity(alpha), strictness, str(clf.path))
        if trigger is not None and trigger is not button and shown_last.get(session) == key and key[0] is not None:
            yield (*(gr.skip() for _ in range(6)), forget)
            return
        shown_last.pop(session)
        device = str(next(clf.model.parameters()).device)
        t0 = time.perf_counter()
        try:  # decoded once, at the overlay's size: the answer and the heatmap both start from it; an answer in
            # flight from the decode on, so that other requests' heatmaps wait for it (batching.Stages)
            with STAGES.running(STAGES.ANSWER):
                prepared = prepare_for_explain(clf, source, MAX_SIDE)
                pred = classify(clf, strictness=strictness, prepared=prepared)
        except Exception as exc:
            error = (ui_error(exc, "Prediction", title="Not a usable image",
                              message=f"{name}: {exc.problem}. Accepted: {ACCEPTED}.") if isinstance(exc, ImageError)
                     else ui_error(exc, "Prediction", title="Prediction failed"))
            # the last photo's answer goes with it: "rose · 99%" and its heatmap stayed beside a photo that could not
            # be read, as if they were its answer (a walkthrough)
            yield None, None, None, f"**Not classified.** {md(error.message)}", "", None, forget
            raise error from None
        answered = time.perf_counter() - t0
        probs = gr.update(value=pred.probabilities, label=("Closest classes (none of them)" if pred.rejected
                                                           else "Class probabilities"),
                          elem_classes=["fd-rejected"] if pred.rejected else [])
        head = verdict_text(pred, clf.classes)
        small = photo_note(*prepared.decoded_size, clf.preprocessing.input_size)
        if small:
            head += f"\n\n**{small}**"
        info = {**pred.to_dict(), "model": clf.name}
        yield (probs, None, None, f"{answered * 1000:.0f} ms for the answer on {device} · heatmap ({method}) follows…",
               head, info, forget)
        try:
            ex = explain(clf, method=method, target=target if target in clf.classes else None,
                         alpha=opacity(alpha), prepared=prepared, answered=pred)
        except ImageError as exc:
            raise ui_error(exc, "Explanation", title="Not a usable image",
                           message=f"{name}: {exc.problem}. Accepted: {ACCEPTED}.") from None
        except Exception as exc:
            raise ui_error(exc, "Explanation", title="Explanation failed") from None
        seconds = time.perf_counter() - t0
        images = ImageFiles(ctx.settings.folder(IMAGES_FOLDER))
        try:
            overlay, shown = images.write(ex.overlay), images.write(heatmap_image(ex.heatmap))
            # the plain value from here on: the label and style of the first update stay, and API clients get
            # the probabilities themselves rather than an update
            yield (pred.probabilities, overlay, shown, summary_text(ex, seconds, device, clf.name, answered,
                                                                    pred.rejected) + "\n\n*Checking the heatmap…*",
                   head, info, gr.skip())
            try:  # the faithfulness check (one more batched forward) comes after the heatmap, never before it
                ex = check_explanation(clf, ex, prepared)
            except Exception as exc:
                raise ui_error(exc, "Checking the heatmap", title="Heatmap check failed") from None
            text = summary_text(ex, seconds, device, clf.name, answered, pred.rejected)
            shown_last.set(session, key)
            yield pred.probabilities, overlay, shown, text, head, info, gr.skip()
        finally:  # Gradio copied them into its cache when each output was sent, before the generator went on
            images.remove()

    # the options re-run it when the visitor changes them, not when the server sets them: the page's load sets
    # the CAM method to the model's best one, and .change then ran a photo dropped meanwhile twice. Dropdowns on
    # .select: a choice made with the mouse also fires .input when the list closes (two identical runs)
    # the photo on .input (an upload, the webcam, a paste, its clearing: once each) and after an example is loaded;
    # .change fired twice when a photo replaced another (two identical runs)
    inputs = [image, method, target, alpha, active, strictness]
    outputs = [label, overlay, heatmap, timing, verdict, details, active]  # active: a State, not in the API's outputs
    # progress (and a refused photo's one "Error" badge) on the probabilities: on every output, a photo that is not an
    # image drew five badges over the verdict, the probabilities, both pictures and the timing line
    run = dict(preprocess=False, trigger_mode="always_last", concurrency_limit=PREDICT_CONCURRENCY, concurrency_id="predict",
               show_progress_on=[label])
    gr.on([button.click, image.input, method.select, target.select, active.change, strictness.input],
          predict, inputs, outputs, api_name="predict", **run)
    # a new photo (an upload, the webcam, a paste, an example) is explained for its own predicted class: a class
    # picked for the photo before stayed, and the next photo's heatmap explained that class
    image_box = image
    image.input(lambda: PREDICTED, None, target, api_visibility="private", show_progress="hidden", queue=False)
    if examples is not None:
        examples.load_input_event.then(lambda: PREDICTED, None, target, api_visibility="private",
                                       show_progress="hidden", queue=False).then(
            predict, inputs, outputs, api_visibility="undocumented", **run)

    def reblend(image: Any, shown: Any, alpha: float = 0.5, active: str | None = None):
        """The overlay again at a new opacity, from the photo and the heatmap on screen: no model run (it re-ran
        the whole prediction on the slider's release, and a value typed into its box ran nothing)."""
        from flowerdemo.infer.explain import reblend as blend

        if image is None or shown is None:
            yield gr.skip()  # nothing shown yet: the next prediction uses the new opacity
            return
        clf, _ = ctx.models.resolve(active)
        try:
            source, _ = image_source(image)
            colored, _ = image_source(shown)
            with Image.open(colored) as picture:
                new = None if clf is None else blend(clf, source, picture, opacity(alpha), MAX_SIDE)
        except Exception as exc:
            raise ui_error(exc, "Changing the heatmap's opacity", title="Opacity not applied") from None
        if new is None:  # the photo changed since that heatmap: its own prediction brings the overlay
            yield gr.skip()
            return
        images = ImageFiles(ctx.settings.folder(IMAGES_FOLDER))
        try:
            yield images.write(new)
        finally:  # Gradio copied it into its cache when the output was sent
            images.remove()

    # .change, not .input: the slider's reset button sets the value without an input event
    alpha.change(reblend, [image, heatmap, alpha, active], overlay, api_name="reblend", preprocess=False,
                 trigger_mode="always_last", concurrency_limit=PREDICT_CONCURRENCY)

    def refresh(active: str | None = None, request: gr.Request = None):
        """Model list (what this visitor may use), the visitor's model (else the operator's default), its
        classes, its best CAM method; the notice if there is none."""
        choices = model_choices(ctx, ctx.visitors.identity(request), active)
        chosen = str(Path(active).resolve()) if active else None
        clf, note = ctx.models.resolve(chosen if chosen in {v for _, v in choices} else None)
        current = str(Path(clf.path).resolve()) if clf is not None else None
        classes = list(clf.classes) if clf is not None else []
        # no active model (None: the operator's default) stays None: setting it to the default's path at a page
        # load fired active.change, which ran /predict once more (twice for a photo dropped during the load)
        return (gr.update(choices=choices, value=current), gr.update(choices=[PREDICTED, *classes], value=PREDICTED),
                gr.update(visible=clf is None), current if active else gr.skip(), known_classes_text(clf),
                default_method(clf))

    refresh_outputs = [model, target, notice, active, known, method]
    active_at = 3  # where refresh_outputs has the visitor's model

    def back_to_default(active: str | None = None, request: gr.Request = None):
        """The model list, classes and CAM method of the default model when the visitor's model became the default
        (a prediction found theirs gone; they deleted it); nothing otherwise (who changed it set them)."""
        if active:
            return tuple(gr.skip() for _ in range(len(refresh_outputs) - 1))
        shown = refresh(None, request)
        return shown[:active_at] + shown[active_at + 1:]

    active.change(back_to_default, active, [o for o in refresh_outputs if o is not active], api_visibility="private",
                  show_progress="hidden", queue=False)

    def select(path: str | None, active: str | None = None, request: gr.Request = None):
        default = ctx.models.default
        if not path or path == active or (not active and default is not None and path == str(default.resolve())):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()  # already the model in use: nothing to re-run
        if path not in {v for _, v in model_choices(ctx, ctx.visitors.identity(request), active)}:
            gr.Warning("That model is not one of yours or the server's (a shared model loads with its code in "
                       "the Models tab). Keeping the current model.")
            return gr.skip(), gr.skip(), gr.update(value=active), gr.skip(), gr.skip()
        try:
            clf = ctx.models.get(path)
        except Exception as exc:
            shown = exc if log_failure(exc, "Loading the chosen model") else "an error in the server"
            gr.Warning(f"That checkpoint does not load: {shown}. Keeping the current model.")
            return gr.skip(), gr.skip(), gr.update(value=active), gr.skip(), gr.skip()
        return (path, gr.update(choices=[PREDICTED, *clf.classes], value=PREDICTED), gr.skip(), known_classes_text(clf),
                default_method(clf))

    model.input(select, [model, active], [active, target, model, known, method], api_name="select_model")
    return PredictRefs(refresh, refresh_outputs)


def opacity(value: Any) -> float:
    """The slider's value within [0, 1]: its number box takes any number typed (5 meant "all the way")."""
    return min(1.0, max(0.0, float(value)))


def cam_choices() -> list[tuple[str, str]]:
    """The CAM methods with their expected time on a 2-core CPU (measured: flowerdemo.infer.cam_times)."""
    bounded = {"scorecam": ", bounded: scores the 32 most active channels"}  # infer/explain.py BoundedScoreCAM
    return [(f"{name} (~{_seconds(CAM_SECONDS.get(name))}{bounded.get(name, '')})", name) for name in CAM_NAMES]


def _seconds(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.0f} s"


def default_method(clf):
    """The best-ranked CAM method for the active model (its checkpoint's ranking), else Grad-CAM."""
    if clf is None:
        return gr.skip()
    from flowerdemo.infer.explain import best_cam_method

    return gr.update(value=best_cam_method(clf.meta))


def summary_text(ex: Explanation, seconds: float, device: str, model_name: str, answered: float | None = None,
                 rejected: bool = False) -> str:
    """The markdown under a prediction: the top class and the timings, the heatmap's faithfulness check
    in plain words, the square the model saw on non-square photos, and a note when the heatmap is empty
    (Grad-CAM found no region that raises the class score, which happens when the model is unsure)."""
    top, p = next(iter(ex.probabilities.items()))
    took = f"{answered * 1000:.0f} ms for the answer, {seconds * 1000:.0f} ms with the heatmap" if answered else \
        f"{seconds * 1000:.0f} ms"
    # a photo declined as none of the classes gets no headline class here either, only its closest one
    head = f"closest class *{top}* ({p:.1%}), not an answer" if rejected else f"**{top}** ({p:.1%})"
    text = f"{head} · {ex.method} for *{ex.class_name}* · {took} on {device} · model `{model_name}`"
    check = getattr(ex, "faithfulness", None)
    if check is not None:
        text += f"\n\n**Heatmap check:** {check.text}"
    crop = getattr(ex, "crop_note", None)
    if crop:
        text += f"\n\n{crop}"
    if not float(ex.heatmap.max()) > 0:
        text += (f"\n\nThe heatmap is empty: no region raises the score of *{ex.class_name}* (all the "
                 f"evidence {ex.method} found is negative, common when the model is unsure). Try another class "
                 f"or method.")
    return text
