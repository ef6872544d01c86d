"""Models tab: the active checkpoint (details, download), checkpoint upload, Hugging Face Hub load/push."""

from __future__ import annotations

import os
import re
from pathlib import Path

import gradio as gr
import pandas as pd

from flowerdemo.train.metrics import checkpoint_accuracy

from .errors import ui_error
from .predict_tab import PredictRefs
from .state import AppContext

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
RUN_COLUMNS = ["run", "model", "classes", "val acc", "created", "pinned"]


def _hub():
    try:
        from flowerdemo.models import hub
    except ImportError as exc:
        raise ui_error(exc, "Loading Hugging Face Hub support",
                       message=f"Hugging Face Hub support is not available in this installation ({exc}).") from None
    return hub


def _repo(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not REPO_ID.match(repo_id):
        raise gr.Error("Type a Hub repo id as owner/name, e.g. `your-name/flowers-lite0`.", title="Repo id")
    return repo_id


def _active(ctx: AppContext, active: str | None):
    clf, _ = ctx.models.resolve(active)
    if clf is None:
        raise gr.Error("There is no model yet: train one or load one first.", title="No model")
    return clf


def details(ctx: AppContext, active: str | None) -> str:
    clf, _ = ctx.models.resolve(active)
    if clf is None:
        return "No model is loaded yet."
    m, metrics = clf.meta, clf.meta.get("metrics", {})
    acc = checkpoint_accuracy(metrics)
    lines = [f"**{clf.name}** — {m.get('architecture')} ({m.get('mode', '?')} mode), "
             f"input {clf.preprocessing.input_size} px",
             f"Classes: {', '.join(clf.classes)}"]
    if acc is not None:
        lines.append(f"Best validation accuracy {acc} at epoch {metrics.get('best_epoch', '?')}"
                     + (f", macro F1 {metrics['macro_f1']:.3f}" if "macro_f1" in metrics else ""))
    if m.get("created"):
        lines.append(f"Created {m['created']} on {m.get('device', '?')}")
    return "  \n".join(lines)


def runs_table(ctx: AppContext) -> pd.DataFrame:
    from flowerdemo.models.checkpoints import read_meta
    from flowerdemo.serve.runs import is_pinned

    rows = []
    for run in ctx.models.runs():
        try:
            meta = read_meta(run)
        except (ValueError, OSError):
            continue
        acc = checkpoint_accuracy(meta.get("metrics", {}))
        rows.append({"run": run.name, "model": meta.get("architecture"), "classes": len(meta.get("classes", [])),
                     "val acc": acc or "", "created": meta.get("created", ""),
                     "pinned": "yes" if is_pinned(run) else ""})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def build(ctx: AppContext, active: gr.State, predict: PredictRefs) -> None:
    with gr.Tab("Models", id="models"):
        with gr.Row(equal_height=False):
            with gr.Column():
                gr.Markdown("### Active model")
                info = gr.Markdown("No model is loaded yet.")
                download_btn = gr.Button("Download the active model (.zip)")
                download = gr.File(label="Checkpoint", interactive=False, height=90)
                upload = gr.File(label="Load a checkpoint file (.zip of a run folder, or model.safetensors)",
                                 file_types=[".zip", ".safetensors"], type="filepath", height=140)
            with gr.Column():
                gr.Markdown("### Hugging Face Hub")
                repo = gr.Textbox(label="Repo id", placeholder="your-name/flowers-lite0")
                token = gr.Textbox(label="Access token", type="password", placeholder="hf_… (or set HF_TOKEN)",
                                   info="Only needed for private repos and for pushing; never stored.")
                with gr.Row():
                    revision = gr.Textbox(label="Revision (load)", placeholder="main")
                    private = gr.Checkbox(label="Private repo (push)", value=False)
                with gr.Row():
                    load_btn = gr.Button("Load from the Hub")
                    push_btn = gr.Button("Push the active model")
                hub_status = gr.Markdown()
                with gr.Accordion("Model card that will be pushed", open=False):
                    card_btn = gr.Button("Show model card", size="sm")
                    card = gr.Markdown()
        gr.Markdown("### Checkpoints on this server")
        runs = gr.Dataframe(value=pd.DataFrame(columns=RUN_COLUMNS), interactive=False, max_height=260)

    def show(active: str | None = None):
        return details(ctx, active), runs_table(ctx)

    def download_checkpoint(active: str | None = None) -> str:
        from flowerdemo.serve.runs import zip_run

        ctx.housekeeping()
        return str(zip_run(_active(ctx, active).path, ctx.settings.folder("downloads")))

    def adopt(run: Path) -> str:
        """Make a newly arrived run active, or delete it with a clear message if it does not load."""
        from flowerdemo.serve.runs import remove_tree

        try:
            ctx.models.get(run)
        except Exception as exc:
            remove_tree(run, ctx.settings.checkpoint_dir)
            raise ui_error(exc, "Loading a new checkpoint", title="Bad checkpoint",
                           message=f"That checkpoint does not load: {exc}") from None
        ctx.housekeeping(run)
        return str(run)

    def upload_checkpoint(file: str | None = None) -> tuple[str, str]:
        from flowerdemo.serve.runs import import_run

        if not file:
            raise gr.Error("Choose a checkpoint file first.")
        try:
            run = import_run(file, ctx.settings.checkpoint_dir)
        except Exception as exc:
            raise ui_error(exc, "Importing an uploaded checkpoint", title="Bad checkpoint",
                           message=f"That file is not a usable checkpoint: {exc}") from None
        return adopt(run), f"Loaded `{run.name}` from the uploaded file."

    def hub_load(repo_id: str, token: str = "", revision: str = "") -> tuple[str, str]:
        hub = _hub()
        repo_id = _repo(repo_id)
        try:
            run = hub.pull_checkpoint(repo_id, ctx.settings.checkpoint_dir, token=token.strip() or None,
                                      revision=revision.strip() or None)
        except Exception as exc:
            raise ui_error(exc, f"Loading {repo_id} from the Hub", title="Hub") from None
        return adopt(Path(run)), f"Loaded `{repo_id}` from the Hub; it is now the active model."

    def hub_push(repo_id: str, token: str = "", private: bool = False, active: str | None = None) -> str:
        hub = _hub()
        repo_id = _repo(repo_id)
        token = token.strip() or os.environ.get("HF_TOKEN") or None  # None: huggingface_hub's saved login, if any
        clf = _active(ctx, active)
        try:
            url = hub.push_checkpoint(clf.path, repo_id, token=token, private=bool(private))
        except Exception as exc:
            raise ui_error(exc, f"Pushing to {repo_id} on the Hub", title="Hub") from None
        return f"Pushed `{clf.name}` to [{repo_id}]({url})."

    def model_card(active: str | None = None) -> str:
        return _hub().model_card(_active(ctx, active).meta)

    active.change(show, active, [info, runs], api_name="model_details")
    download_btn.click(download_checkpoint, active, download, api_name="download_checkpoint")
    upload.upload(upload_checkpoint, upload, [active, hub_status], api_name="upload_checkpoint").success(
        predict.refresh, active, predict.refresh_outputs, api_name="refresh_after_upload")
    load_btn.click(hub_load, [repo, token, revision], [active, hub_status], api_name="hub_load").success(
        predict.refresh, active, predict.refresh_outputs, api_name="refresh_after_hub")
    push_btn.click(hub_push, [repo, token, private, active], hub_status, api_name="hub_push")
    card_btn.click(model_card, active, card, api_name="model_card")
