"""Models tab: the active checkpoint (details, download), checkpoint upload, the visitor's own models (name,
delete, share by code or link; open a shared one), Hugging Face Hub load/push. A visitor's models are theirs:
downloading and pushing them is the owner's (flowerdemo/serve/owners.py)."""

from __future__ import annotations

import html
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import pandas as pd

from flowerdemo.data.builder import md
from flowerdemo.train.metrics import checkpoint_accuracy

from .errors import ui_error
from .predict_tab import PredictRefs
from .state import AppContext

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
RUN_COLUMNS = ["name", "whose", "model", "classes", "val acc", "epochs", "created", "pinned", "run"]


def epochs_text(meta: dict) -> str:
    """Epochs trained, and of how many when the run was stopped early: runs looked alike in the table."""
    done, planned = len(meta.get("history") or []), (meta.get("config") or {}).get("epochs")
    if isinstance(planned, int) and 0 < done < planned:
        return f"{done} of {planned} (stopped)"
    return str(done) if done else ""


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
        raise gr.Error("Type a Hub repo id as owner/name, e.g. `your-name/flowers-lite0`.", title="Repo id",
                       print_exception=False)
    return repo_id


def _active(ctx: AppContext, active: str | None):
    clf, _ = ctx.models.resolve(active)
    if clf is None:
        raise gr.Error("There is no model yet: train one or load one first.", title="No model", print_exception=False)
    return clf


def _owned(ctx: AppContext, active: str | None, request, doing: str):
    """The active model, if this visitor may take it away (download, push): theirs or the server's."""
    from flowerdemo.serve.owners import display_name, may_download

    clf = _active(ctx, active)
    if not may_download(clf.path, ctx.visitors.identity(request)):
        raise gr.Error(f"{html.escape(display_name(clf.path))} was shared with you: you can use it here, but only the visitor "
                       f"who made it can {doing} it.", title="Not yours",
                       print_exception=False)
    return clf


def _my_run(ctx: AppContext, run: str | None) -> Path:
    """One of the checkpoint folder's runs, by folder name (or path): never a path elsewhere."""
    name = Path(run or "").name
    path = ctx.settings.checkpoint_dir / name
    if not name or name.startswith(".") or not path.is_dir():
        raise gr.Error("Choose one of your models first.", title="No model chosen", print_exception=False)
    return path


def _own_run(ctx: AppContext, run: str | None, request, doing: str) -> Path:
    """One of the checkpoint folder's runs that this visitor made (to delete it, to use it from here)."""
    from flowerdemo.serve.owners import is_owner

    path = _my_run(ctx, run)
    if not is_owner(path, ctx.visitors.identity(request)):
        raise gr.Error(f"Only the visitor who made a model can {doing} it here.", title="Not yours", print_exception=False)
    return path


def my_choices(ctx: AppContext, identity: str) -> list[tuple[str, str]]:
    """(display name, folder name) of the visitor's own models, newest first."""
    from flowerdemo.models.checkpoints import WEIGHTS
    from flowerdemo.serve.owners import display_name, owned_runs

    return [(display_name(r), r.name) for r in reversed(owned_runs(ctx.settings.checkpoint_dir, identity))
            if (r / WEIGHTS).is_file()]


def calibration_photos() -> list[Path]:
    """The pictures the int8 ONNX download is calibrated on (activation ranges): the app's example pictures
    and the photos installed packages ship; a visitor's training photos are not kept after training."""
    from .predict_tab import EXAMPLES_DIR, package_photos

    return sorted(EXAMPLES_DIR.glob("*.jpg")) + [path for path, _ in package_photos()]


def onnx_download(ctx: AppContext, clf, int8: bool) -> Path:
    """The active model as ONNX in the downloads folder, made once per checkpoint file and variant (an
    export takes a minute or two on a small CPU)."""
    from flowerdemo.export import SUFFIXES, export
    from flowerdemo.models.checkpoints import WEIGHTS, safe_name

    folder = ctx.settings.folder("downloads") / f"onnx-{safe_name(clf.name)}-{int(clf.path.joinpath(WEIGHTS).stat().st_mtime)}"
    done = folder / (safe_name(clf.name) + SUFFIXES["onnx", int8])
    if not done.is_file():
        export(clf, "onnx", folder, int8=int8, calibration=calibration_photos() if int8 else None)
    return done


def details(ctx: AppContext, active: str | None) -> str:
    clf, _ = ctx.models.resolve(active)
    if clf is None:
        return "No model is loaded yet."
    m, metrics = clf.meta, clf.meta.get("metrics", {})
    acc = checkpoint_accuracy(metrics)
    from flowerdemo.serve.owners import display_name

    lines = [f"**{md(display_name(clf.path))}** — {m.get('architecture')} ({m.get('mode', '?')} mode), "
             f"input {clf.preprocessing.input_size} px",
             f"Classes: {', '.join(md(c) for c in clf.classes)}"]
    if acc is not None:
        which = "Validation accuracy (the last epoch's weights)" if metrics.get("kept") == "last" else \
            "Best validation accuracy"
        lines.append(f"{which} {acc} at epoch {metrics.get('best_epoch', '?')}"
                     + (f", macro F1 {metrics['macro_f1']:.3f}" if "macro_f1" in metrics else ""))
    if m.get("created"):
        lines.append(f"Created {readable_time(m['created'])} on {m.get('device', '?')}")
    return "  \n".join(lines)


def readable_time(stamp: object) -> str:
    """'2026-11-26 15:42 UTC' from a checkpoint's ISO time ('2026-11-26T15:42:09+00:00'); as given if not one."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)
    if when.tzinfo is None:
        return when.strftime("%Y-%m-%d %H:%M")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def runs_table(ctx: AppContext, identity: str = "anonymous", active: str | None = None) -> pd.DataFrame:
    """The runs this visitor may use (predict_tab.model_choices' rule: with the active one if it came by a share
    code), and whose each is."""
    from flowerdemo.models.checkpoints import read_meta
    from flowerdemo.serve.owners import display_name, owner_key, read_owner, visible_runs
    from flowerdemo.serve.runs import is_pinned

    default = ctx.models.default.resolve() if ctx.models.default is not None else None
    rows, key = [], owner_key(identity)
    runs = visible_runs(ctx.settings.checkpoint_dir, identity, ctx.settings.share_runs)
    active_run = Path(active).resolve() if active else None
    if active_run is not None and active_run.is_dir() and active_run not in {r.resolve() for r, _ in runs}:
        runs.append((active_run, read_owner(active_run)))  # only server code sets `active`
    for run, record in runs:
        try:
            meta = read_meta(run)
        except (ValueError, OSError):
            continue
        acc = checkpoint_accuracy(meta.get("metrics", {}))
        whose = ("default" if run.resolve() == default else "server" if record is None else
                 "yours" if record.owner == key else "shared with you" if run.resolve() == active_run else "another visitor")
        rows.append({"name": display_name(run, record), "whose": whose, "model": meta.get("architecture"),
                     "classes": len(meta.get("classes", [])), "val acc": acc or "", "epochs": epochs_text(meta),
                     "created": meta.get("created", ""),
                     "pinned": "yes" if is_pinned(run) or whose == "default" else "", "run": run.name})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def build(ctx: AppContext, active: gr.State, predict: PredictRefs) -> tuple[Callable[..., tuple], list]:
    """The tab; returns (show, its outputs) for the page load: the active model's details and the runs."""
    with gr.Tab("Models", id="models"):
        with gr.Row(equal_height=False):
            with gr.Column():
                gr.Markdown("### Active model")
                info = gr.Markdown("Loading the active model…", elem_id="models-active")
                download_btn = gr.Button("Download the active model (.zip)")
                with gr.Row():
                    onnx_btn = gr.Button("Download as ONNX", size="sm")
                    onnx_int8_btn = gr.Button("Download as ONNX int8 (about a third smaller)", size="sm")
                # not a drop zone: it looked like a second one above the upload's (a walkthrough)
                download = gr.File(label="Your download appears here (press a Download button above)",
                                   interactive=False, height=90)
                gr.Markdown("### Load a model file")
                upload = gr.File(label="Load a checkpoint file (.zip of a run folder, or model.safetensors)",
                                 # .onnx is let through to say what it is for (Gradio's own refusal named only
                                 # the types accepted, and the app's own download is one)
                                 file_types=[".zip", ".safetensors", ".onnx"], type="filepath", height=140,
                                 elem_id="models-upload")
                upload_status = gr.Markdown(elem_id="models-upload-status")  # by the upload, not under the Hub's
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
        with gr.Row(equal_height=False):
            with gr.Column():
                gr.Markdown("### Your models\nWhat you train or upload is yours: other visitors do not see it "
                            "unless you share it.")
                # the choices are per visitor, set on page load: the handlers check what is sent
                mine = gr.Dropdown([], label="Your models", elem_id="models-mine", allow_custom_value=True)
                with gr.Row():
                    new_name = gr.Textbox(label="Name", placeholder="e.g. garden flowers, May", max_length=60, scale=3)
                    rename_btn = gr.Button("Rename", size="sm", scale=1)
                with gr.Row():
                    # picking a model here only chose what to rename, share or delete; using it meant the Predict
                    # tab's list, which nothing here said (a walkthrough)
                    use_btn = gr.Button("Use it", size="sm", variant="primary", elem_id="models-use")
                    share_btn = gr.Button("Share (code and link)", size="sm")
                    delete_btn = gr.Button("Delete…", variant="stop", size="sm", elem_id="models-delete")
                # deleting cannot be undone: asked first (one click deleted a trained model, a walkthrough found)
                with gr.Row(visible=False) as confirm_row:
                    confirm_text = gr.Markdown(elem_id="models-delete-question")
                    confirm_btn = gr.Button("Yes, delete it", variant="stop", size="sm", elem_id="models-delete-yes")
                    keep_btn = gr.Button("Keep it", size="sm", elem_id="models-delete-no")
                mine_status = gr.Markdown(elem_id="models-mine-status")
            with gr.Column():
                gr.Markdown("### A model shared with you")
                code = gr.Textbox(label="Share code", placeholder="the code another visitor gave you")
                open_btn = gr.Button("Use the shared model", size="sm")
        gr.Markdown("### Checkpoints you can use")
        runs = gr.Dataframe(value=pd.DataFrame(columns=RUN_COLUMNS), interactive=False, max_height=260)

    def listing(identity: str, chosen: str | None = None, active: str | None = None) -> tuple:
        choices = my_choices(ctx, identity)
        value = chosen if chosen in {v for _, v in choices} else (choices[0][1] if choices else None)
        return gr.update(choices=choices, value=value), runs_table(ctx, identity, active)

    def show(active: str | None = None, request: gr.Request = None):
        """The active model's details, the runs this visitor may use, and their own models."""
        mine_update, table = listing(ctx.visitors.identity(request), active=active)
        return details(ctx, active), table, mine_update

    def download_checkpoint(active: str | None = None, request: gr.Request = None) -> str:
        from flowerdemo.serve.owners import display_name
        from flowerdemo.serve.runs import zip_run

        ctx.housekeeping()
        # named as the visitor named the model ("garden flowers.zip" → garden-flowers.zip), in a folder of its own:
        # two visitors' models may share a name
        path = _owned(ctx, active, request, "download").path
        return str(zip_run(path, ctx.settings.folder("downloads") / uuid.uuid4().hex, name=display_name(path)))

    def onnx_file(active: str | None, request, int8: bool) -> str:
        """ONNX file for onnxruntime (no flowerdemo needed: examples/onnx_predict.py); the owner's, like the zip."""
        from flowerdemo.export import SUFFIXES
        from flowerdemo.serve.owners import display_name
        from flowerdemo.serve.runs import download_stem

        clf = _owned(ctx, active, request, "download")
        ctx.housekeeping()
        try:
            made = onnx_download(ctx, clf, int8)
        except Exception as exc:
            raise ui_error(exc, "Exporting the active model to ONNX", title="ONNX export") from None
        # named as the model is, like the .zip ("my garden" → my-garden.onnx, not the run folder's name), in a folder
        # of its own; the export itself stays where it was made, for the next download
        named = ctx.settings.folder("downloads") / uuid.uuid4().hex / (
            download_stem(display_name(clf.path), clf.path.name) + SUFFIXES["onnx", int8])
        named.parent.mkdir(parents=True)
        try:
            os.link(made, named)
        except OSError:  # another file system: a copy
            shutil.copyfile(made, named)
        return str(named)

    def download_onnx(active: str | None = None, request: gr.Request = None) -> str:
        return onnx_file(active, request, int8=False)

    def download_onnx_int8(active: str | None = None, request: gr.Request = None) -> str:
        return onnx_file(active, request, int8=True)

    def adopt(run: Path, request) -> str:
        """Make a newly arrived run this visitor's and active, or delete it with a clear message if it does
        not load."""
        from flowerdemo.serve.runs import remove_tree

        try:
            clf = ctx.models.get(run)
        except Exception as exc:
            remove_tree(run, ctx.settings.checkpoint_dir)
            raise ui_error(exc, "Loading a new checkpoint", title="Bad checkpoint",
                           message=f"That checkpoint does not load: {exc}") from None
        ctx.adopt(run, ctx.visitors.identity(request), "uploaded")
        return str(Path(clf.path).resolve())

    def upload_checkpoint(file: str | None = None, request: gr.Request = None):
        from flowerdemo.serve.owners import display_name
        from flowerdemo.serve.runs import import_run

        if not file:
            raise gr.Error("Choose a checkpoint file first.", title="No file", print_exception=False)
        try:
            run = import_run(file, ctx.settings.checkpoint_dir, owner=ctx.visitors.identity(request))
            active = adopt(run, request)
        except Exception as exc:
            error = ui_error(exc, "Importing an uploaded checkpoint", title="Bad checkpoint",
                             message=f"That file is not a usable checkpoint: {exc}")
            # said by the upload box too (the toast fades), which then lets the refused file go (.failure below): an
            # .onnx refused stayed in the box as if it were loaded (a walkthrough)
            yield gr.skip(), f"**Not loaded.** {md(error.message)}"
            raise error from None
        yield active, f"Loaded **{md(display_name(run))}** from the uploaded file; it is yours and now active."

    def rename_run(run: str | None = None, name: str = "", request: gr.Request = None):
        from flowerdemo.serve.owners import rename

        identity, path = ctx.visitors.identity(request), _my_run(ctx, run)
        try:
            shown = rename(path, identity, name)
        except Exception as exc:
            raise ui_error(exc, "Renaming a model", title="Cannot rename") from None
        return (*listing(identity, path.name), f"Renamed to **{md(shown)}**.")

    def current_name(run: str | None = None, request: gr.Request = None) -> str:
        """The chosen model's name in the Name box, to edit rather than retype (only for the visitor's own)."""
        from flowerdemo.serve.owners import display_name

        if not run or run not in {v for _, v in my_choices(ctx, ctx.visitors.identity(request))}:
            return ""
        return display_name(ctx.settings.checkpoint_dir / run)

    def delete_run(run: str | None = None, active: str | None = None, request: gr.Request = None):
        from flowerdemo.serve.owners import delete, display_name

        identity, path = ctx.visitors.identity(request), _my_run(ctx, run)
        shown = display_name(path)
        try:
            delete(path, identity, ctx.settings.checkpoint_dir)
        except Exception as exc:
            raise ui_error(exc, "Deleting a model", title="Cannot delete") from None
        gone = active is not None and Path(active).resolve() == path.resolve()
        return (*listing(identity), f"Deleted **{md(shown)}**." + (" You now use the default model." if gone else ""),
                None if gone else active)

    def ask_delete(run: str | None = None, request: gr.Request = None):
        """The question before a delete: which model, and that it cannot be undone (only the owner's models)."""
        from flowerdemo.serve.owners import display_name

        path = _own_run(ctx, run, request, "delete")
        return gr.update(visible=True), f"Delete **{md(display_name(path))}** for good? This cannot be undone."

    def use_run(run: str | None = None, request: gr.Request = None) -> tuple[str, str]:
        """One of the visitor's own models as their active model (the Predict tab's, too)."""
        from flowerdemo.serve.owners import display_name

        path = _own_run(ctx, run, request, "use")
        try:
            ctx.models.get(path)
        except Exception as exc:
            raise ui_error(exc, "Loading the chosen model", title="Cannot use it") from None
        return str(path.resolve()), f"Using **{md(display_name(path))}** now, here and in the Predict tab."

    def share_run(run: str | None = None, request: gr.Request = None) -> str:
        from flowerdemo.serve.owners import display_name, share_code

        path = _my_run(ctx, run)
        try:
            shared = share_code(path, ctx.visitors.identity(request))
        except Exception as exc:
            raise ui_error(exc, "Sharing a model", title="Cannot share") from None
        page = (request.headers.get("referer", "") if request is not None else "").split("?")[0]
        return (f"Anyone with this code can use **{md(display_name(path))}** here (not download it): `{shared}`  \n"
                f"or open this link: {page or 'this page'}?model={shared}")

    def open_shared(text: str = "") -> tuple[str, str]:
        from flowerdemo.serve.owners import display_name, find_shared

        if not (text or "").strip():
            raise gr.Error("Type or paste the share code you were given first.", title="No code", print_exception=False)
        run = find_shared(ctx.settings.checkpoint_dir, text)
        if run is None:
            raise gr.Error("No model on this server has that share code; check it with whoever gave it to you.",
                           title="Unknown code", print_exception=False)
        return str(run.resolve()), f"Using **{md(display_name(run))}**, shared with you."

    def hub_load(repo_id: str, token: str = "", revision: str = "", request: gr.Request = None) -> tuple[str, str]:
        hub = _hub()
        repo_id = _repo(repo_id)
        try:
            run = hub.pull_checkpoint(repo_id, ctx.settings.checkpoint_dir, token=token.strip() or None,
                                      revision=revision.strip() or None)
        except Exception as exc:
            raise ui_error(exc, f"Loading {repo_id} from the Hub", title="Hub") from None
        return adopt(Path(run), request), f"Loaded `{repo_id}` from the Hub; it is yours and now the active model."

    def hub_push(repo_id: str, token: str = "", private: bool = False, active: str | None = None,
                 request: gr.Request = None) -> str:
        hub = _hub()
        repo_id = _repo(repo_id)
        token = token.strip() or os.environ.get("HF_TOKEN") or None  # None: huggingface_hub's saved login, if any
        clf = _owned(ctx, active, request, "push")
        try:
            url = hub.push_checkpoint(clf.path, repo_id, token=token, private=bool(private))
        except Exception as exc:
            raise ui_error(exc, f"Pushing to {repo_id} on the Hub", title="Hub") from None
        return f"Pushed `{clf.name}` to [{repo_id}]({url})."

    def model_card(active: str | None = None) -> str:
        return _hub().model_card(_active(ctx, active).meta)

    active.change(show, active, [info, runs, mine], api_name="model_details")
    download_btn.click(download_checkpoint, active, download, api_name="download_checkpoint")
    onnx_btn.click(download_onnx, active, download, api_name="download_onnx")
    onnx_int8_btn.click(download_onnx_int8, active, download, api_name="download_onnx_int8")
    mine.change(current_name, mine, new_name, api_name="model_name")
    renamed = rename_btn.click(rename_run, [mine, new_name], [mine, runs, mine_status], api_name="rename_run")
    renamed.success(predict.refresh, active, predict.refresh_outputs, api_name="refresh_after_rename")
    renamed.success(lambda chosen: details(ctx, chosen), active, info, api_visibility="private")  # its new name
    delete_btn.click(ask_delete, mine, [confirm_row, confirm_text], api_visibility="private")
    keep_btn.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private", queue=False)
    mine.change(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private", queue=False)
    # another of one's models picked: the last message (a share code, a rename) was about the one before
    mine.input(lambda: "", None, mine_status, api_visibility="private", queue=False)
    # another active model: the download box held the previous one's file
    active.change(lambda: None, None, download, api_visibility="private", queue=False, show_progress="hidden")
    deleted = confirm_btn.click(delete_run, [mine, active], [mine, runs, mine_status, active], api_name="delete_run")
    deleted.then(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private", queue=False)
    deleted.success(predict.refresh, active, predict.refresh_outputs, api_name="refresh_after_delete")
    use_btn.click(use_run, mine, [active, mine_status], api_name="use_run").success(
        predict.refresh, active, predict.refresh_outputs, api_name="refresh_after_use")
    share_btn.click(share_run, mine, mine_status, api_name="share_run")
    gr.on([open_btn.click, code.submit], open_shared, code, [active, mine_status], api_name="open_shared").success(
        predict.refresh, active, predict.refresh_outputs, api_name="refresh_after_open")
    uploaded = upload.upload(upload_checkpoint, upload, [active, upload_status], api_name="upload_checkpoint")
    uploaded.success(predict.refresh, active, predict.refresh_outputs, api_name="refresh_after_upload")
    uploaded.failure(lambda: None, None, upload, api_visibility="private", queue=False)
    load_btn.click(hub_load, [repo, token, revision], [active, hub_status], api_name="hub_load").success(
        predict.refresh, active, predict.refresh_outputs, api_name="refresh_after_hub")
    push_btn.click(hub_push, [repo, token, private, active], hub_status, api_name="hub_push")
    card_btn.click(model_card, active, card, api_name="model_card")
    return show, [info, runs, mine]
