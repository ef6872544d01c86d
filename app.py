"""The web app: `python app.py` (see `--help`; each setting is also an environment variable). Importing
this module builds nothing: `demo` is built on first access (`gradio app.py`, embedding, tests), from the
environment's settings, without loading any model; the operator's default model (`--default-model`, else the
bundled one) is loaded at launch, or on the first prediction. Every new visitor gets it; what a visitor trains
or uploads is theirs (see flowerdemo/serve/owners.py).

UI only: training, prediction and explanation live in the `flowerdemo` package; the tabs in `ui/`.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

import gradio as gr

from flowerdemo.config import ConfigError
from flowerdemo.device import configure_process
from flowerdemo.settings import MB, Settings, add_arguments, export_cache_dir
from ui import models_tab, predict_tab, train_tab
from ui.plots import CSS
from ui.state import AppContext, browser_secret

log = logging.getLogger("flowerdemo.app")

TITLE = "Photo classifier: train it, ask it, see why"  # not "Flower classifier": a visitor's model may know cars
INTRO_SHOWN_CLASSES = 8


def intro(ctx: AppContext) -> str:
    """The page's heading and what the operator's default model knows (the bundled one: five flowers)."""
    from flowerdemo.data.builder import md
    from flowerdemo.models.checkpoints import read_meta

    try:
        classes = list(read_meta(ctx.models.default)["classes"]) if ctx.models.default is not None else []
    except (OSError, ValueError, KeyError) as exc:  # said where it matters: the Predict tab answers without it
        log.warning("the default model's classes could not be read for the heading: %s", exc)
        classes = []
    shown = ", ".join(md(c) for c in classes[:INTRO_SHOWN_CLASSES]) + (", …" if len(classes) > INTRO_SHOWN_CLASSES else "")
    knows = f"It starts out knowing {len(classes)} classes ({shown}). " if classes else ""
    return (f"# {TITLE}\n{knows}Teach it your own classes from a few labelled photos, classify new ones, and see "
            "where the model looked (Grad-CAM).")
THEME = gr.themes.Soft(primary_hue="rose", secondary_hue="emerald", neutral_hue="slate")
# what the browser keeps when the visitor's model is the operator's default: Gradio's front end leaves a BrowserState
# as it was when a function returns None or "" for it, so forgetting a run needs a value (not a folder name: the
# parentheses are never in one the app makes)
DEFAULT_MODEL = "(default)"
_BUILDING = threading.Lock()  # two first reads of `demo` at once still build one


def create_demo(ctx: AppContext | None = None) -> gr.Blocks:
    """Build the Blocks for `ctx` (default: the settings of the environment, `Settings.from_env()`)."""
    ctx = ctx or AppContext.create()
    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(intro(ctx))
        active = gr.State(None)  # this visitor's model (a run directory); None = the operator's default
        # who this browser is, across reloads and restarts: a random token in its localStorage, encrypted with a
        # secret kept beside the checkpoints (a new secret each start would make every browser a stranger)
        secret = browser_secret(ctx.settings)
        visitor = gr.BrowserState(None, storage_key="flowerdemo-visitor", secret=secret)
        # the visitor's model across reloads: its run folder's name, checked on every load (still there, still
        # theirs to use); None (never stored) or DEFAULT_MODEL = the operator's default
        remembered = gr.BrowserState(None, storage_key="flowerdemo-model", secret=secret)
        session = gr.State(None, delete_callback=ctx.visitors.forget)  # forgets the token when the tab goes
        with gr.Tabs():
            predict = predict_tab.build(ctx, active)
            on_load, load_outputs = train_tab.build(ctx, active, predict)
            show_models, models_outputs = models_tab.build(ctx, active, predict)

        def init(active: str | None = None, token: str | None = None, kept: str | None = None,
                 request: gr.Request = None):
            """Page load: bind the session to the browser's token (a new one for a new browser), open a model
            shared by link (?model=CODE), else the model this browser used last (if it may still), then
            predict_tab.refresh's outputs, the Models tab's, the token and the session."""
            from flowerdemo.serve.owners import find_shared

            session_hash = getattr(request, "session_hash", None)
            token = ctx.visitors.register(session_hash, token)
            code = dict(getattr(request, "query_params", None) or {}).get("model")
            shared = find_shared(ctx.settings.checkpoint_dir, code) if code else None
            if code and shared is None:
                gr.Warning("That share link's model is not on this server any more; showing the default model.")
            chosen, keep = (str(shared) if shared else active), gr.skip()
            if chosen is None and kept and kept != DEFAULT_MODEL:
                last = ctx.remembered_run(kept, ctx.visitors.identity(request))
                default = ctx.models.default
                if last is None:  # said once: the browser forgets it
                    gr.Warning("The model you used last is not on this server any more; showing the default model.")
                    keep = DEFAULT_MODEL
                elif default is None or last.resolve() != default.resolve():  # the default stays None: no
                    chosen = str(last)  # active.change, so no extra /predict at the load
            return (*predict.refresh(chosen, request), *show_models(chosen, request), keep, token, session_hash)

        demo.load(init, [active, visitor, remembered],
                  [*predict.refresh_outputs, *models_outputs, remembered, visitor, session], api_name="init")
        # every change of the visitor's model (picked, trained, uploaded, opened, deleted) is remembered by the browser
        active.change(remember, active, remembered, api_visibility="private", show_progress="hidden", queue=False)
        demo.load(on_load, None, load_outputs, api_name="backbones")
        # does nothing: the floor of a round trip through the queue (benchmarks/serving.py); never waits for a slot
        gr.api(ping, api_name="ping", concurrency_limit=None)
    demo.ctx = ctx  # for tests and embedding: the settings, models and training slot behind this demo
    return demo


def remember(active: str | None) -> str:
    """What the browser keeps of the visitor's model: the run folder's name (never a path), or DEFAULT_MODEL."""
    return Path(active).name if active else DEFAULT_MODEL


def ping() -> str:
    """Nothing but the round trip: `pong`."""
    return "pong"


def launch_kwargs(settings: Settings) -> dict:
    """What `launch()` needs besides host and port: upload cap, example files, look."""
    examples = [str(predict_tab.EXAMPLES_DIR), *(str(path) for path, _ in predict_tab.package_photos())]
    # worker threads: every /predict in flight holds one while it waits for its batch or a replica (Gradio's
    # default of 40 would cap the requests in flight below predict_tab.PREDICT_CONCURRENCY)
    return {"max_file_size": settings.max_upload_mb * MB, "allowed_paths": examples,
            "theme": THEME, "css": CSS, "max_threads": 2 * predict_tab.PREDICT_CONCURRENCY}


def __getattr__(name: str) -> gr.Blocks:
    """`app.demo`, built once on first access (PEP 562), so that `import app` builds nothing."""
    if name != "demo":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _BUILDING:
        if "demo" not in globals():
            globals()["demo"] = create_demo()  # cached: later reads find it without coming here
    return globals()["demo"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def _warm_up(clf) -> None:
    from flowerdemo.infer.predict import warm_up

    try:
        warm_up(clf)
    except Exception:  # the requests build what they need themselves; a warm-up never stops the server
        log.exception("warming up the default model failed")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        settings = Settings.from_args(args)
        ctx = AppContext.create(settings)  # also clears what a crash left and checks --default-model
    except ConfigError as exc:  # a bad flag or FLOWERDEMO_* value: the message names it and what is accepted
        raise SystemExit(f"app.py: {exc}") from None
    export_cache_dir(settings.cache_dir)  # --cache-dir holds fast mode's feature cache too
    configure_process()  # backend flags: once per process, never per request or run
    from flowerdemo.infer import runtime

    try:
        runtime.enable()  # the CPU forwards of requests on onnxruntime (infer/runtime.py)
    except runtime.RuntimeChoiceError as exc:
        raise SystemExit(f"app.py: {exc}") from None
    demo = globals()["demo"] = create_demo(ctx)  # the one demo: `app.demo` is this one from now on
    ctx.housekeeping()
    clf = ctx.models.default_model()  # load before the first visitor arrives
    log.info("default model: %s", clf.path if clf else f"none under {settings.checkpoint_dir} (train or load one)")
    if clf is not None:  # its onnxruntime twins and one answer, while the server starts listening
        threading.Thread(target=_warm_up, args=(clf,), daemon=True, name="flowerdemo-warm-up").start()
    # the heavy stages of /predict (CAMs, heatmap checks): one at a time per two cores, each with its share of
    # them, so that a burst's answers never queue behind dozens of CAMs (infer/batching.Stages)
    from flowerdemo.device import DEFAULT_THREADS
    from flowerdemo.infer.batching import STAGES

    STAGES.slots = max(1, DEFAULT_THREADS // 2)
    # one at a time for what has no limit of its own (training claims its slot, uploads write files); /predict
    # sets its own (ui/predict_tab.PREDICT_CONCURRENCY: batched answers, CAMs on replicas) and /ping has none
    demo.queue(default_concurrency_limit=1).launch(server_name=settings.host, server_port=settings.port,
                                                   **launch_kwargs(settings))


if __name__ == "__main__":
    main()
