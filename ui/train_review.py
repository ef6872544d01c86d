"""After a run: the photos that may be labelled wrong (one click moves or removes a builder photo) and a
drill-down into the confusion matrix (a cell's validation photos, each with its heatmap and probabilities).

What a finished run left for its review lives in the visitor's session (`review` state): the run, the folder
the stored paths are relative to (the builder's own photos for a builder run, so a fix acts on them), its
classes, label issues and per-photo validation predictions. Paths asked for through the API are accepted only
when that run listed them: nothing else on the server can be read through these endpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from flowerdemo.data.builder import DatasetDraft, md
from flowerdemo.data.images import load_image
from flowerdemo.train.events import Finished
from flowerdemo.train.label_issues import cell, photo_path

from . import plots
from .errors import ui_error
from .state import AppContext

log = logging.getLogger(__name__)
THUMB = 160
CELL_SHOWN = 48  # photos of one confusion cell drawn at once (a diagonal cell of a big run holds hundreds)
EXPLAINED = ("Found by [cleanlab](https://github.com/cleanlab/cleanlab) from the model's predictions on photos it "
             "did not train on (the validation photos, and in quick mode each training photo scored by a model "
             "fitted without it): a photo the model confidently puts in another class than the one it was filed "
             "under is often filed wrong. Look before you change anything: sometimes the model is the one wrong.")
ISSUE_COLUMNS = ["photo", "filed as", "looks like", "confidence", "split"]


def review_state(ev: Finished, source: str, root: str | Path) -> dict[str, Any] | None:
    """What the review of a finished run needs (None for a run that saved nothing). `root`: the folder its
    stored paths are relative to now (the builder's draft for a builder run, the kept .zip for an upload)."""
    if ev.run_dir is None:
        return None
    return {"run_dir": str(ev.run_dir), "root": str(root), "builder": source == "builder",
            "classes": list(ev.report.get("classes") or []), "issues": [dict(i) for i in ev.label_issues],
            "total": int((ev.report.get("label_issues") or {}).get("total", len(ev.label_issues))),
            "error": (ev.report.get("label_issues") or {}).get("error"),
            "predictions": list(ev.val_predictions), "stopped": ev.stopped,
            "matrix": ev.report.get("confusion_matrix") or []}


def thumb(path: Path) -> Any | None:
    try:
        img = load_image(path, draft=(THUMB, THUMB))
    except (ValueError, OSError):
        return None
    img.thumbnail((THUMB, THUMB))
    return img


def issue_caption(issue: dict[str, Any]) -> str:
    return f"filed as {issue['given']} · looks like {issue['suggested']} ({issue['confidence']:.0%})"


def issues_view(state: dict[str, Any] | None) -> tuple[str, list[tuple], list[str], pd.DataFrame]:
    """(explanation with the count, gallery, the paths shown in gallery order, table) of a run's label issues."""
    table = pd.DataFrame(columns=ISSUE_COLUMNS)
    if not state:
        return "", [], [], table
    if state["stopped"]:
        return "This run was stopped, and a stopped run skips the search for wrong labels.", [], [], table
    if state.get("error"):
        return f"The search for wrong labels failed this time ({state['error']}); the model is saved.", [], [], table
    pics, shown = [], []
    for issue in state["issues"]:
        img = thumb(photo_path(issue["path"], state["root"]))
        if img is not None:
            pics.append((img, issue_caption(issue)))
            shown.append(issue["path"])
    table = pd.DataFrame([{"photo": i["path"], "filed as": i["given"], "looks like": i["suggested"],
                           "confidence": i["confidence"], "split": i["split"]} for i in state["issues"]],
                         columns=ISSUE_COLUMNS)
    total = state["total"]
    if not total:
        return f"**No photo looks labelled wrong.** {EXPLAINED}", [], [], table
    listed = f" (the {len(state['issues'])} most suspect shown)" if total > len(state["issues"]) else ""
    head = f"**{total} photo{'s' if total != 1 else ''} may be labelled wrong**{listed}."
    if len(shown) < len(state["issues"]):
        head += f" {len(state['issues']) - len(shown)} of them are no longer there (moved or removed since)."
    one = total == 1
    if state["builder"]:
        how = (f"Click {'it' if one else 'one'}, then move it to the class it looks like or remove it; then press "
               "**Start training** again.")
    else:
        how = (f"{'It is' if one else 'They are'} in the photos you gave (the .zip or folder): fix {'it' if one else 'them'} "
               "there, then train again. (Photos made here, in the builder, can be fixed with one click.)")
    return f"{head} {how}\n\n{EXPLAINED}", pics, shown, table


def largest_confusion(report: dict[str, Any]) -> tuple[str | None, str | None]:
    """The (true, predicted) pair of the largest off-diagonal cell; the first diagonal cell when none."""
    classes, matrix = report.get("classes") or [], report.get("confusion_matrix") or []
    if not classes:
        return None, None
    best, pair = 0, (classes[0], classes[0])
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if i != j and count > best:
                best, pair = count, (classes[i], classes[j])
    return pair


def cell_view(state: dict[str, Any] | None, true: str | None, pred: str | None) -> tuple[str, list[tuple], list[str]]:
    """(line, gallery, paths in gallery order) of the validation photos of class `true` predicted as `pred`."""
    if not state:
        raise ValueError("there is no finished run to look into yet: train a model first")
    for name, what in ((true, "true"), (pred, "predicted")):
        if name not in state["classes"]:
            raise ValueError(f"choose a {what} class; this run's classes are: {', '.join(state['classes'])}")
    photos = cell(state["predictions"], true, pred)
    pics, shown = [], []
    for p in photos[:CELL_SHOWN]:
        img = thumb(photo_path(p["path"], state["root"]))
        if img is not None:
            pics.append((img, f"{Path(p['path']).name} · {p['confidence']:.0%}"))
            shown.append(p["path"])
    if not photos:  # an empty cell: nothing to click
        return f"No validation photo of *{md(true)}* was called *{md(pred)}*.", pics, shown
    what = "right" if true == pred else "wrong"
    line = (f"**{len(photos)}** validation photo{'s' if len(photos) != 1 else ''} of *{md(true)}* the model called "
            f"*{md(pred)}* ({what}), most confident first")
    if len(photos) > CELL_SHOWN:
        line += f"; the first {CELL_SHOWN} shown"
    if len(shown) < min(len(photos), CELL_SHOWN):
        line += f"; {min(len(photos), CELL_SHOWN) - len(shown)} no longer there (moved or removed since)"
    return line + ". Click one to see what the model looked at.", pics, shown


def listed(state: dict[str, Any] | None, path: str) -> Path:
    """The file of a photo this run listed (an issue or a validation photo), refusing any other path."""
    if not state:
        raise ValueError("there is no finished run to look into yet: train a model first")
    known = {p["path"] for p in state["predictions"]} | {i["path"] for i in state["issues"]}
    if not path or path not in known:
        raise ValueError(f"{path!r} is not one of this run's photos: click a photo in the gallery")
    file = photo_path(path, state["root"])
    if not file.is_file():
        raise ValueError(f"the photo {path} is no longer there (moved or removed since the run)")
    return file


def explain_photo(ctx: AppContext, state: dict[str, Any] | None, path: str) -> tuple[Any, dict[str, float], str]:
    """(heatmap overlay, class probabilities, a line) of one listed photo, by the run's own model."""
    from flowerdemo.infer.explain import best_cam_method, explain

    file = listed(state, path)
    clf = ctx.models.get(state["run_dir"])
    ex = explain(clf, load_image(file), method=best_cam_method(clf.meta), max_side=512)
    return ex.overlay, ex.probabilities, f"{md(path)}: the model says *{md(ex.class_name)}* (heatmap: where it looked)."


def fix_issue(draft: DatasetDraft, state: dict[str, Any] | None, path: str, move: bool) -> str:
    """Move the builder photo of issue `path` to the class it looks like, or remove it; returns a note."""
    if not state:
        raise ValueError("there is no finished run to review yet: train a model first")
    if not state["builder"]:
        raise ValueError("this run's photos came from a .zip or a folder: fix them there, then train again")
    issue = next((i for i in state["issues"] if i["path"] == path), None)
    if issue is None:
        raise ValueError("click one of the photos that may be labelled wrong first")
    cls, _, photo = path.partition("/")
    if not (draft.root / cls / photo).is_file():
        state["issues"].remove(issue)
        return f"That photo is no longer in *{md(cls)}* (moved or removed since the run): nothing to do."
    if move:
        draft.move_photo(cls, photo, issue["suggested"])
        note = f"Moved a photo from *{md(cls)}* to *{md(issue['suggested'])}*."
    else:
        draft.remove_photo(cls, photo)
        note = f"Removed a photo from *{md(cls)}*."
    state["issues"].remove(issue)
    return note + " Press **Start training** again when you are done."


@dataclass
class ReviewRefs:
    """The review's components; `outputs` are what a Finished event fills (see `finished`)."""

    box: gr.Column
    state: gr.State
    outputs: list

    def finished(self, review: dict[str, Any] | None, report: dict[str, Any]) -> list:
        """Values for `outputs` after a run: its label issues and the largest confusion's photos."""
        text, pics, shown, table = issues_view(review)
        true, pred = largest_confusion(report)
        names = (review or {}).get("classes") or []
        line, cell_pics, cell_shown = cell_view(review, true, pred) if review and true else ("", [], [])
        return [gr.update(visible=review is not None), review, text, gr.update(value=pics, visible=bool(pics)),
                shown, table, gr.update(visible=False), "", gr.update(choices=names, value=true),
                gr.update(choices=names, value=pred), line, cell_pics, cell_shown, "", None, None, ""]


def build(ctx: AppContext, confusion: gr.Image, draft_for) -> ReviewRefs:
    """Lay out the review (inside the Train tab's results) and wire its events. `draft_for(ctx, request)`:
    the visitor's builder dataset."""
    state = gr.State(None)
    with gr.Column(visible=False) as box:
        gr.Markdown("#### Photos that may be labelled wrong")
        issues_md = gr.Markdown(elem_id="review-issues-text")
        issues = gr.Gallery(label="Filed as · looks like (confidence)", columns=6, height=220, object_fit="cover",
                            fit_columns=False, interactive=False, allow_preview=False, elem_id="review-issues")
        issue_shown = gr.State([])
        issue_pick = gr.Textbox(visible=False)  # the selected issue's path (relative to the run's data)
        with gr.Row(visible=False) as fix_row:
            move_btn = gr.Button("Move to the class it looks like", size="sm", elem_id="review-move")
            remove_btn = gr.Button("Remove", size="sm", elem_id="review-remove")
        fix_note = gr.Markdown(elem_id="review-note")
        with gr.Accordion("The same photos as a table", open=False):
            table = gr.Dataframe(headers=ISSUE_COLUMNS, interactive=False, max_height=240, wrap=True)
        gr.Markdown("#### Inside the confusion matrix\nPick a true class and what the model called it (or click "
                    "a square of the matrix), then a photo.")
        with gr.Row():
            true_dd = gr.Dropdown([], label="True class", elem_id="review-true")
            pred_dd = gr.Dropdown([], label="The model said", elem_id="review-pred")
        cell_md = gr.Markdown(elem_id="review-cell-text")
        cell_gallery = gr.Gallery(label="Validation photos in this square", columns=6, height=220,
                                  object_fit="cover", fit_columns=False, interactive=False, allow_preview=False,
                                  elem_id="review-cell")
        cell_shown = gr.State([])
        cell_pick = gr.Textbox(visible=False)
        with gr.Row():
            overlay = gr.Image(label="Where the model looked", type="pil", interactive=False, height=300,
                               elem_id="review-overlay")
            probs = gr.Label(num_top_classes=5, label="Class probabilities", elem_id="review-probs")
        explain_md = gr.Markdown()

    def pick(shown: list[str], evt: gr.SelectData) -> str:
        return shown[evt.index] if isinstance(evt.index, int) and 0 <= evt.index < len(shown) else ""

    def pick_issue(shown: list[str], review: dict | None, evt: gr.SelectData):
        path = pick(shown, evt)
        issue = next((i for i in (review or {}).get("issues", []) if i["path"] == path), None)
        can = bool(issue and review and review["builder"])
        label = f"Move to {issue['suggested']}" if issue else "Move to the class it looks like"
        return path, gr.update(visible=can), gr.update(value=label)

    def show_cell(true: str | None, pred: str | None, review: dict | None = None):
        try:
            line, pics, shown = cell_view(review, true, pred)
        except Exception as exc:
            raise ui_error(exc, "Showing the photos", title="Confusion matrix") from None
        return line, pics, shown, "", None, None, ""

    def click_matrix(review: dict | None, evt: gr.SelectData):
        report = {"classes": (review or {}).get("classes"), "confusion_matrix": (review or {}).get("matrix")}
        hit = plots.confusion_cell_at(report, *evt.index) if isinstance(evt.index, (list, tuple)) else None
        if hit is None:
            return gr.update(), gr.update()
        return review["classes"][hit[0]], review["classes"][hit[1]]

    def explain_one(path: str, review: dict | None = None):
        try:
            return explain_photo(ctx, review, path)
        except Exception as exc:
            raise ui_error(exc, "Explaining the photo", title="Heatmap") from None

    def fix(path: str, move: bool, review: dict | None, request: gr.Request | None):
        try:
            note = fix_issue(draft_for(ctx, request), review, path, move)
        except Exception as exc:
            raise ui_error(exc, "Fixing the photo", title="Photos") from None
        text, pics, shown, rows = issues_view(review)
        return note, text, gr.update(value=pics, visible=bool(pics)), shown, rows, "", gr.update(visible=False), review

    def move(path: str, review: dict | None = None, request: gr.Request = None):
        return fix(path, True, review, request)

    def remove(path: str, review: dict | None = None, request: gr.Request = None):
        return fix(path, False, review, request)

    cell_outs = [cell_md, cell_gallery, cell_shown, cell_pick, overlay, probs, explain_md]
    fix_outs = [fix_note, issues_md, issues, issue_shown, table, issue_pick, fix_row, state]
    issues.select(pick_issue, [issue_shown, state], [issue_pick, fix_row, move_btn], show_progress="hidden")
    gr.on([true_dd.input, pred_dd.input], show_cell, [true_dd, pred_dd, state], cell_outs, api_name="review_cell")
    confusion.select(click_matrix, state, [true_dd, pred_dd], show_progress="hidden").then(
        show_cell, [true_dd, pred_dd, state], cell_outs, show_progress="hidden")
    cell_gallery.select(pick, cell_shown, cell_pick, show_progress="hidden").then(
        explain_one, [cell_pick, state], [overlay, probs, explain_md], api_name="review_explain")
    move_btn.click(move, [issue_pick, state], fix_outs, api_name="review_fix")
    remove_btn.click(remove, [issue_pick, state], fix_outs, api_name="review_remove")
    outputs = [box, state, issues_md, issues, issue_shown, table, fix_row, fix_note, true_dd, pred_dd, *cell_outs]
    return ReviewRefs(box, state, outputs)
