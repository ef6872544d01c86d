"""The web app: `python app.py` (see `--help`). Importing this module builds `demo` without loading
any model; the newest usable checkpoint is loaded at launch, or on the first prediction.

UI only: training, prediction and explanation live in the `flowerdemo` package; the tabs in `ui/`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import gradio as gr

from ui import models_tab, predict_tab, train_tab
from ui.plots import CSS
from ui.state import MB, AppContext, Settings

log = logging.getLogger("flowerdemo.app")

INTRO = ("# Flower classifier\nFine-tune an ImageNet CNN on your own labelled photos, classify new ones, "
         "and see where the model looked (Grad-CAM).")
THEME = gr.themes.Soft(primary_hue="rose", secondary_hue="emerald", neutral_hue="slate")


def create_demo(ctx: AppContext | None = None) -> gr.Blocks:
    """Build the Blocks for `ctx` (default: settings from FLOWERDEMO_* environment variables)."""
    ctx = ctx or AppContext.create()
    with gr.Blocks(title="Flower classifier", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        active = gr.State(None)  # this visitor's model (a run directory); None = the newest on disk
        with gr.Tabs():
            predict = predict_tab.build(ctx, active)
            on_load, load_outputs = train_tab.build(ctx, active, predict)
            models_tab.build(ctx, active, predict)
        demo.load(predict.refresh, active, predict.refresh_outputs, api_name="init")
        demo.load(on_load, None, load_outputs, api_name="backbones")
    demo.ctx = ctx  # for tests and embedding: the settings, models and training slot behind this demo
    return demo


def launch_kwargs(settings: Settings) -> dict:
    """What `launch()` needs besides host and port: upload cap, example files, look."""
    return {"max_file_size": settings.max_upload_mb * MB, "allowed_paths": [str(predict_tab.EXAMPLES_DIR)],
            "theme": THEME, "css": CSS}


demo = create_demo()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=None, help="interface to listen on [GRADIO_SERVER_NAME or 127.0.0.1]")
    p.add_argument("--port", type=int, default=None, help="port [GRADIO_SERVER_PORT or 7860]")
    p.add_argument("--checkpoint-dir", type=Path, default=Path(env("FLOWERDEMO_CHECKPOINT_DIR", "checkpoints")),
                   help="where runs are written and read [FLOWERDEMO_CHECKPOINT_DIR or checkpoints]")
    p.add_argument("--data-dir", type=Path, action="append", default=None,
                   help="a server folder visitors may train from by typing a path under it; repeatable "
                        "[FLOWERDEMO_DATA_DIRS, os.pathsep-separated; none: only uploads and the flowers download]")
    p.add_argument("--keep-runs", type=int, default=int(env("FLOWERDEMO_KEEP_RUNS", "20")),
                   help="unpinned runs kept on disk, oldest deleted first; 0 = keep all [20]")
    p.add_argument("--max-upload-mb", type=int, default=int(env("FLOWERDEMO_MAX_UPLOAD_MB", "1024")),
                   help="largest accepted upload in MB [1024]")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "flowerdemo",
                   help="download cache for the built-in flowers dataset [~/.cache/flowerdemo]")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    base = Settings.from_env()
    settings = Settings(checkpoint_dir=args.checkpoint_dir, data_dirs=tuple(args.data_dir or base.data_dirs),
                        keep_runs=args.keep_runs, max_upload_mb=args.max_upload_mb, cache_dir=args.cache_dir)
    ctx = AppContext.create(settings)
    app = create_demo(ctx)
    ctx.housekeeping()
    clf = ctx.models.newest()  # load before the first visitor arrives
    log.info("active model: %s", clf.path if clf else f"none under {settings.checkpoint_dir} (train or load one)")
    app.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port,
                                                  **launch_kwargs(settings))


if __name__ == "__main__":
    main()
