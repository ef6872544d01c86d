"""Train tab: pick a dataset, see what is in it, one click on Start, watch it learn, read the results."""

from __future__ import annotations

import dataclasses
import logging

import gradio as gr

from flowerdemo.config import SCHEDULES, TrainConfig
from flowerdemo.serve.jobs import Busy, on_zero_gpu
from flowerdemo.serve.owners import claim
from flowerdemo.train.events import Finished, RunStarted

from . import builder, plots, train_data, train_review
from .errors import ui_error
from .predict_tab import PredictRefs
from .state import AppContext
from .train_view import TrainView

log = logging.getLogger(__name__)
DEFAULTS = TrainConfig()
CHECKED = "Checked:"  # how the Progress box starts after a dataset check
NOT_STARTED, NOT_CHECKED = "**Not started.**", "**Not checked.**"  # how a refused Start or check begins
STALE_STATUS = ("Your photos changed. Press **Check the dataset** to see them again, or **Start training**: it uses "
                "the photos as they are now.")
STALE_FOUND = "**Out of date:** your photos changed since this check."
AUGMENTS = [("random resized crop", "random_resized_crop"), ("horizontal flip", "hflip"),
            ("colour jitter", "color_jitter"), ("rotation ±30°", "rotation"), ("translation ±10%", "translate"),
            ("random erasing", "random_erasing")]
# Plain words first, the technical term in brackets or in the help text (Teachable Machine is the bar)
MODES = [("Quick (CPU-friendly)", "fast"), ("Thorough (best with a GPU)", "full")]
FREEZE = [("adapt the whole starting model", "none"), ("keep the starting model as it is (train the new last "
          "layer only)", "backbone"), ("keep its first layers as they are", "stages")]
SCHEDULE_WORDS = {"warmup_cosine": "gentle start, then slowing down smoothly", "linear": "slowing down steadily",
                  "step": "slowing down in steps", "constant": "the same all along"}


def gpu_present() -> bool:
    import torch

    return torch.cuda.is_available() or on_zero_gpu()


def backbone_choices(check: bool = True) -> list[tuple[str, str]]:
    """Registry names, marked by whether their ImageNet weights are on this machine (checking imports
    torchvision, so the first page load does it, not the import of the app): ready here, or downloaded."""
    from flowerdemo.models.registry import MODELS, weights_available

    if not check:
        return [(name, name) for name in MODELS]
    return [(f"{name} · {'ready here ✓' if weights_available(name) else 'downloaded first'}", name) for name in MODELS]


def make_config(backbone: str, mode: str, epochs: float, batch_size: float, lr: float, optimizer: str,
                schedule: str, warmup_epochs: float, freeze: str, frozen_stages: float, image_size: float,
                augmentations: list[str], seed: float) -> TrainConfig:
    """The UI's values as a TrainConfig (ConfigError says which value is wrong)."""
    aug = dataclasses.replace(DEFAULTS.augment, **{v: v in (augmentations or []) for _, v in AUGMENTS})
    return dataclasses.replace(DEFAULTS, model=backbone, mode=mode, epochs=int(epochs), batch_size=int(batch_size),
                               lr=float(lr), optimizer=optimizer, schedule=schedule, warmup_epochs=float(warmup_epochs),
                               freeze=freeze, frozen_stages=int(frozen_stages), image_size=int(image_size or 0),
                               augment=aug, seed=int(seed or 0))


def build(ctx: AppContext, active: gr.State, predict: PredictRefs) -> tuple:
    """Lay out the tab and wire its events; returns (on_load fn, its outputs) for the page-load event."""
    sources = train_data.source_choices(ctx)
    allowed = ", ".join(str(p) for p in ctx.settings.data_dirs)
    with gr.Tab("Train", id="train") as tab:
        held = gr.State(None, delete_callback=lambda h: train_data.release(ctx, h))
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                gr.Markdown("### 1 · Your photos\nA few photos of each kind of thing the model should tell apart: "
                            "one *class* per kind.")
                source = gr.Radio(sources, value=sources[0][1], label="Images from", show_label=False)
                made_here = builder.build(ctx, tab, visible=sources[0][1] == "builder")
                zip_file = gr.File(label="Zip of class folders (one sub-folder per class, or train/ and val/ folders "
                                   "of classes)", file_types=[".zip"], type="filepath", height=110, visible=False)
                folder = gr.Textbox(label="Folder on this server", visible=False, placeholder="/data/my_flowers",
                                    elem_id="train-folder", info=f"Allowed under: {allowed}" if allowed else None)
                scan_btn = gr.Button("Check the dataset", size="sm", elem_id="train-check")
                found = gr.Markdown()
                with gr.Accordion("What was found", open=False) as found_box:
                    thumbs = gr.Gallery(label="A few training images", columns=6, height=200, object_fit="cover",
                                        fit_columns=False, show_label=False, interactive=False)
                    counts = gr.Dataframe(label="Images per class", interactive=False, max_height=240)
                    skipped = gr.Dataframe(label="Skipped files", interactive=False, max_height=200, wrap=True,
                                           visible=False)
            with gr.Column(scale=4):
                gr.Markdown("### 2 · Training")
                backbone = gr.Dropdown(backbone_choices(check=False), value=DEFAULTS.model, label="Starting model",
                                       info="a network already trained on a million ImageNet photos (the "
                                       "'backbone'); yours starts from what it knows")
                mode = gr.Radio(MODES, value="full" if gpu_present() else "fast", label="How to train",
                                info="Quick adapts only the starting model's last layers ('fast mode'); thorough "
                                "adapts all of it ('full fine-tuning'). The default suits this computer.")
                epochs = gr.Slider(1, 100, value=DEFAULTS.epochs, step=1, label="Rounds over your photos",
                                   info="one round (an 'epoch') shows the model each photo once",
                                   elem_id="train-epochs")
                with gr.Accordion("Advanced options", open=False):
                    with gr.Row():
                        batch_size = gr.Slider(4, 256, value=DEFAULTS.batch_size, step=4, label="Photos per step",
                                               info="the 'batch size': more is faster on a GPU and needs more memory")
                        lr = gr.Number(DEFAULTS.lr, label="Learning speed", minimum=1e-6, maximum=1.0,
                                       info="the new last layer's 'learning rate': too high and training jumps about")
                    with gr.Row():
                        optimizer = gr.Radio([("AdamW", "adamw"), ("SGD + momentum", "sgd")], value=DEFAULTS.optimizer,
                                             label="Optimiser", info="how each correction is made; AdamW adapts itself")
                        schedule = gr.Dropdown([(f"{words} ({name})", name) for name, words in SCHEDULE_WORDS.items()
                                                if name in SCHEDULES], value=DEFAULTS.schedule,
                                               label="Learning speed over time",
                                               info="the 'learning-rate schedule'; warmup_cosine: rises for the first "
                                               "rounds, then falls along a cosine curve")
                    with gr.Row():
                        warmup = gr.Slider(0, 10, value=DEFAULTS.warmup_epochs, step=0.5, label="Gentle-start rounds",
                                           info="'warm-up epochs': rounds over which the learning speed rises")
                        image_size = gr.Slider(0, 512, value=DEFAULTS.image_size, step=32, label="Photo size (px)",
                                               elem_id="train-image-size",
                                               info="0 = the starting model's own (224 px); smaller is faster")
                    with gr.Row():
                        freeze = gr.Dropdown(FREEZE, value=DEFAULTS.freeze, label="What stays as it is (thorough)",
                                             info="'freezing' parts of the starting model: fewer weights to learn")
                        frozen_stages = gr.Slider(0, 8, value=DEFAULTS.frozen_stages, step=1, label="First layers kept",
                                                  info="'frozen stages', with 'keep its first layers as they are'")
                    augment = gr.CheckboxGroup(AUGMENTS, label="Variations while training",
                                               info="'augmentations': random changes to each photo, so the model "
                                               "learns the thing and not the picture",
                                               value=[v for _, v in AUGMENTS if getattr(DEFAULTS.augment, v)])
                    seed = gr.Number(DEFAULTS.seed, label="Seed", precision=0,
                                     info="the same seed, photos and settings give the same model")
                with gr.Row():
                    start_btn = gr.Button("▶ Start training", variant="primary", scale=3, elem_id="train-start")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1)
        gr.Markdown("### 3 · Progress")
        status = gr.Markdown("Add your photos, then press **Start training**.", elem_classes="fd-note",
                             elem_id="train-status")
        progress = gr.HTML(plots.progress_html(0, "idle"), elem_id="train-progress")

        def curve(key: str, title: str, y_title: str, **extra) -> gr.LinePlot:
            # no fixed height: with one, the block's label pushes the legend out of view
            return gr.LinePlot(plots.EMPTY_PLOT, x="epoch", y="value", color="series", label=title, color_title="",
                               x_title="epoch", y_title=y_title, elem_id=f"train-{key}", **extra)

        with gr.Row():
            loss_plot = curve("loss", "Loss", "loss")
            acc_plot = curve("acc", "Accuracy", "accuracy", y_lim=[0, 1])
            lr_plot = curve("lr", "Learning rate", "learning rate")
        with gr.Column(visible=False) as results:  # not a Group: Gradio draws a dark frame round a Gallery in one
            summary = gr.Markdown(padding=True, elem_id="train-summary")
            with gr.Row():
                per_class = gr.Dataframe(label="Each class on the photos kept for checking: precision (when it says "
                                         "X, how often it is X), recall (how many X it finds), F1 (both together)",
                                         interactive=False, elem_id="train-per-class")
                confusion = gr.Image(label="Confusion matrix (rows: true class)", type="pil", interactive=False,
                                     buttons=["download"], height=340, elem_id="train-confusion")
                reliability = gr.Image(label="Reliability: how often the model is right at each confidence "
                                       "(validation photos)", type="pil", interactive=False, buttons=["download"],
                                       height=340, elem_id="train-reliability")
            mistakes = gr.Gallery(label="Validation images the model got most wrong (true → predicted)",
                                  columns=6, height=240, object_fit="contain", interactive=False, fit_columns=False)
            review = train_review.build(ctx, confusion, builder.draft_for)

    def choose_source(src: str):
        return gr.update(visible=src == "zip"), gr.update(visible=src == "folder"), gr.update(visible=src == "builder")

    source.change(choose_source, source, [zip_file, folder, made_here.panel], api_name="choose_source")

    def check(source: str, zip_file: str | None = None, folder: str = "", held: dict | None = None,
              request: gr.Request = None, progress=gr.Progress()):
        try:
            with train_data.opened(ctx, source, zip_file, folder, held, progress=lambda f, d: progress(f, desc=d),
                                   draft=builder.draft_for(ctx, request)) as (split, held):
                text, table, skipped_df, pics = train_data.preview(split)
                photos, classes = len(split.train) + len(split.val), len(split.classes)
        except Exception as exc:
            error = ui_error(exc, "Checking the dataset", title="Dataset problem")
            # the refused dataset replaces the last one checked: its "Found 3 classes, 24 images", thumbnails and
            # counts stayed beside the refusal, as if they described the new upload (a walkthrough)
            yield (f"{NOT_CHECKED} {error.message}", gr.skip(), [], None, gr.update(value=None, visible=False),
                   gr.skip(), gr.skip())
            raise error from None
        state = ctx.job.state  # the Progress box speaks of this visitor's own run while one goes on
        mine = state.running and state.owner == ctx.visitors.identity(request)
        ready = gr.skip() if mine else \
            f"{CHECKED} **{photos:,} photos in {classes} classes** (details above). Press **Start training**."
        yield (text, gr.update(open=True), pics, table, gr.update(value=skipped_df, visible=len(skipped_df) > 0), held,
               ready)

    # progress and a refusal show on one box each (not an "Error" badge on every output): the check's by its button
    gr.on([scan_btn.click, zip_file.upload, folder.submit], check, [source, zip_file, folder, held],
          [found, found_box, thumbs, counts, skipped, held, status], api_name="scan_dataset", show_progress_on=[found])
    made_here.wire_check(scan_btn, source)  # the builder's photos: the dataset check's findings, to act on

    def photos_changed(text: str, found_text: str):
        """After a builder edit, a check's "Checked: N photos" or a refusal ("Not started. Add a second class…") and
        the check's findings describe photos that changed (both stayed after photos were added; walkthroughs). A
        run's progress stays."""
        found_stale = found_text and not found_text.startswith((STALE_FOUND, NOT_CHECKED))  # a refusal stays as it is
        # the progress bar is an output only so that a refused Start's "Error" badge on it goes with the refusal
        return (STALE_STATUS if (text or "").startswith((CHECKED, NOT_STARTED)) else gr.skip(),
                f"{STALE_FOUND}\n\n{found_text}" if found_stale else gr.skip(), gr.skip())

    made_here.after_edit(photos_changed, [status, found], [status, found, progress])

    outputs = {"status": status, "progress": progress, "loss": loss_plot, "acc": acc_plot, "lr": lr_plot,
               "results": results, "summary": summary, "per_class": per_class, "confusion": confusion,
               "mistakes": mistakes, "reliability": reliability, "held": held, "active": active}

    def start_training(source: str, zip_file: str | None = None, folder: str = "", backbone: str = DEFAULTS.model,
                       mode: str = "fast", epochs: float = DEFAULTS.epochs, batch_size: float = DEFAULTS.batch_size,
                       lr: float = DEFAULTS.lr, optimizer: str = DEFAULTS.optimizer, schedule: str = DEFAULTS.schedule,
                       warmup_epochs: float = DEFAULTS.warmup_epochs, freeze: str = DEFAULTS.freeze,
                       frozen_stages: float = DEFAULTS.frozen_stages, image_size: float = 0,
                       augmentations: list[str] | None = None, seed: float = 0, held: dict | None = None,
                       active: str | None = None, request: gr.Request = None):
        try:
            cfg = make_config(backbone, mode, epochs, batch_size, lr, optimizer, schedule, warmup_epochs, freeze,
                              frozen_stages, image_size, augmentations, seed)
            # the slot first: a request refused as busy has written nothing; one failing after the upload
            # was extracted deletes it on the way out (`opened`), then frees the slot
            with ctx.job.claim(cfg, owner=ctx.visitors.identity(request)) as slot, \
                    train_data.opened(ctx, source, zip_file, folder, held, cfg.val_fraction, cfg.seed,
                                      draft=builder.draft_for(ctx, request)) as (split, held):
                run = slot.start(split, ctx.settings.checkpoint_dir)
        except Exception as exc:  # said in the Progress box too: the toast fades after a few seconds
            error = ui_error(exc, "Starting training", title="Busy" if isinstance(exc, Busy) else "Cannot start training")
            yield {status: f"{NOT_STARTED} {error.message}"}
            raise error from None
        view = TrainView(cfg.epochs)
        # the x axis spans the whole run from the start: fitted to the epochs so far, Vega drew ticks at 1.5, 2.5…
        axis = gr.update(value=plots.EMPTY_PLOT, x_lim=plots.x_lim_for(cfg.epochs))
        first = {"status": "Starting…", "results": gr.update(visible=False), "held": held,
                 "loss": axis, "acc": axis, "lr": axis}
        yield {**{outputs[k]: v for k, v in first.items()}, review.state: None}  # the last run's review goes
        kept = False  # the run's extracted .zip, kept for its review (train_data.keep)
        try:
            for ev in run:
                view.stopping = ctx.job.state.stopping
                if isinstance(ev, RunStarted):  # the visitor's from its first file on, even if the server dies
                    claim(ev.run_dir, ctx.visitors.identity(request), "trained")
                update = view.update(ev)
                if update is None:
                    continue
                if update.pop("results", False):
                    update["results"] = gr.update(visible=True)
                    pics = update["mistakes"]  # none when every validation image was right: no empty box
                    update["mistakes"] = gr.update(value=pics, visible=bool(pics))
                    diagram = update["reliability"]  # none for a run without calibration bins: no empty box
                    update["reliability"] = gr.update(value=diagram, visible=diagram is not None)
                    ctx.models.get(ev.run_dir)  # load now: the Predict tab answers at once
                    update["active"] = str(ev.run_dir)  # this session's model; other visitors keep theirs
                    ctx.adopt(ev.run_dir, ctx.visitors.identity(request), "trained")  # + per-visitor limit
                    update["held"], kept, values = finished_review(ev, source, held, request)
                    held = update["held"]
                    yield {**{outputs[k]: v for k, v in update.items()}, **dict(zip(review.outputs, values, strict=True))}
                    continue
                yield {outputs[k]: v for k, v in update.items()}
        except Exception as exc:
            raise ui_error(exc, "Training", title="Training failed", message=f"Training failed: {exc}") from None
        finally:  # also when the visitor leaves mid-run: free the slot, delete the extracted upload
            run.close()
            if not kept:
                train_data.release(ctx, held)
        if held and not kept:
            yield {outputs["held"]: None}

    def finished_review(ev: Finished, source: str, held: dict | None, request: gr.Request | None) -> tuple:
        """(what the session holds now, whether that is kept, the review's values) after a finished run: an
        upload's photos are kept for the review; a builder run's review reads the builder's own photos."""
        held, root = train_data.keep(ctx, held, ev.data_root)
        kept = source != "builder" and held is not None
        try:
            if source == "builder":
                root = str(builder.draft_for(ctx, request).root)
            return held, kept, review.finished(train_review.review_state(ev, source, root), ev.report)
        except Exception:  # an extra after training: the run's results show without it
            log.exception("could not show the review of %s", ev.run_dir)
            return held, kept, review.finished(None, ev.report)

    train_inputs = [source, zip_file, folder, backbone, mode, epochs, batch_size, lr, optimizer, schedule, warmup,
                    freeze, frozen_stages, image_size, augment, seed, held, active]
    # the Progress box in view at Start (in the browser, no server call): it sat ~1,400 px below the button at
    # 1280x900 (~3,000 px with the check's findings open), so pressing Start only dimmed the button.
    # Bound before the training: a click's handlers run in order, each after the one before has ended
    start_btn.click(None, js="() => document.getElementById('train-status')?.scrollIntoView("
                             "{behavior: 'smooth', block: 'center'})")

    start_btn.click(start_training, train_inputs, [*outputs.values(), *review.outputs], api_name="train",
                    concurrency_limit=None, show_progress_on=[progress]).then(predict.refresh, active, predict.refresh_outputs,
                                                 api_name="refresh_after_train")

    def stop_training(request: gr.Request = None) -> str:
        if ctx.job.stop(owner=ctx.visitors.identity(request)):  # the browser's: a reloaded page still owns it
            return "**Stopping** after the current batch; the best checkpoint so far is kept."
        if ctx.job.state.running:
            raise gr.Error("The training that is running was started by another visitor; only they can stop it.",
                           title="Not yours", print_exception=False)
        return "No training is running."

    stop_btn.click(stop_training, None, status, api_name="stop", concurrency_limit=None)
    return (lambda: gr.update(choices=backbone_choices())), [backbone]
