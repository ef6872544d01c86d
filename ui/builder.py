"""The Train tab's "make it here" dataset, Teachable-Machine style: name a class, drop photos on it (or pick
them, or take them with the camera), next class, train. Renders what `flowerdemo.data.builder` returns.

Each visitor's dataset lives in their own area of the app's scratch space, named after their hashed
identity (never shared, never in the page): `ctx.settings.folder("datasets")/<owner key>/my-photos/`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from flowerdemo.data.builder import Added, DatasetDraft, md, prune_areas
from flowerdemo.data.images import load_image
from flowerdemo.serve.owners import owner_key
from flowerdemo.serve.runs import allowed_path
from flowerdemo.settings import MB

from .errors import ui_error
from .state import AppContext

AREA = "datasets"
KEEP_S = 6 * 3600  # as extracted uploads (AppContext.housekeeping): a dataset untouched this long is removed
ALL_MB = 4096  # every visitor's dataset together (a module constant: flowerdemo.settings has no such setting yet)
# pruning walks every visitor's photos (a stat per file): once a minute at most, not on every click
PRUNE_EVERY_S = 60.0
_pruned = {"at": float("-inf")}
_prune_lock = threading.Lock()


def prune_now(ctx: AppContext, keep: Path) -> None:
    """Bound all visitors' datasets together (age, then size), at most every PRUNE_EVERY_S; `keep` is the
    area of the visitor acting now."""
    with _prune_lock:
        if time.monotonic() - _pruned["at"] < PRUNE_EVERY_S:
            return
        _pruned["at"] = time.monotonic()
    prune_areas(ctx.settings.folder(AREA), KEEP_S, ALL_MB * MB, keep=[keep])
SHOWN = 48  # thumbnails per class, newest first: a phone scrolls through more, a server draws more
THUMB = 160
REFUSED_SHOWN = 5
SUSPECTS = 24  # photos named by the dataset check, shown as thumbnails to act on
SEVERITY = {"error": "**Fix:**", "warning": "**Check:**", "info": "Note:"}
STALE_FINDINGS = "**Out of date:** your photos changed since this check; press **Check the dataset** again."


@dataclass(frozen=True)
class BuilderRefs:
    """The builder's panel, `wire_check(button)`: that button also checks the builder's photos, and
    `after_edit(fn, inputs, outputs)`: `fn` runs after every action that changed the photos."""

    panel: gr.Column
    wire_check: Callable[[gr.Button, gr.Radio], None]
    after_edit: Callable[..., None]


def draft_for(ctx: AppContext, request: gr.Request | None) -> DatasetDraft:
    """This visitor's dataset (their browser's identity, else their session's)."""
    return DatasetDraft(ctx.settings.folder(AREA) / owner_key(ctx.visitors.identity(request)))


def render(draft: DatasetDraft, cls: str | None, note: str = "") -> tuple:
    """(class list, thumbnails, report, names shown, selected photo) for class `cls` (else the first)."""
    classes = draft.classes()
    names = [c.name for c in classes]
    cls = cls if cls in names else (names[0] if names else None)
    chosen = next((c for c in classes if c.name == cls), None)
    photos = list(chosen.photos[:SHOWN]) if chosen else []
    pics = []
    for p in photos:
        img = load_image(p, draft=(THUMB, THUMB))
        img.thumbnail((THUMB, THUMB))
        pics.append(img)
    more = f", newest {SHOWN} shown" if chosen and chosen.count > SHOWN else ""
    label = f"Photos of {cls}: {chosen.count}{more} · click one to select it" if chosen else "Photos"
    choices = [(f"{c.name} · {c.count}", c.name) for c in classes]
    return (gr.update(choices=choices, value=cls), gr.update(value=pics, label=label), report(draft, note),
            [p.name for p in photos], "")


def report(draft: DatasetDraft, note: str = "") -> str:
    """The last action's note, then what is missing before training (or that it can start) and advice."""
    ready = draft.readiness()
    parts = [note] if note else []
    if ready.ready:
        photos, _ = draft.usage()
        parts.append(f"**Ready to train** on {photos:,} photos in {len(draft.classes())} classes: press "
                     "**Start training**.")
    bullets = "\n".join(f"- {s}" for s in ready.sentences())
    return "\n\n".join([*parts, bullets] if bullets else parts)


def added_note(done: Added, cls: str) -> str:
    text = f"Added {len(done.added)} photo{'s' if len(done.added) != 1 else ''} to *{md(cls)}*." if done.added else ""
    if done.refused:
        listed = "; ".join(md(r) for r in done.refused[:REFUSED_SHOWN])
        more = f" (and {len(done.refused) - REFUSED_SHOWN} more)" if len(done.refused) > REFUSED_SHOWN else ""
        text += f" **Not added:** {listed}{more}."
    return text.strip()


def findings(draft: DatasetDraft) -> tuple[str, list[tuple], list[str]]:
    """The dataset check (flowerdemo.data.check) of the builder's photos: a short report, thumbnails of the
    photos its findings name (caption: class/photo), and the class names to move a photo to."""
    from flowerdemo.data.check import check_dataset

    classes = [c.name for c in draft.classes()]
    if len(classes) < 1 or not any(c.count for c in draft.classes()):
        return "Nothing to check yet: add classes and their photos.", [], classes
    result = check_dataset(draft.root)
    lines = [f"- {SEVERITY.get(f.severity, '')} {md(f.message)}" for f in result.findings]
    text = "\n".join(lines) if lines else "**No problems found** in your photos."
    pics, seen = [], set()
    for f in result.findings:
        for p in f.paths:
            if p in seen or len(pics) >= SUSPECTS or not p.is_file():
                continue
            seen.add(p)
            try:
                img = load_image(p, draft=(THUMB, THUMB))
            except ValueError:
                continue
            img.thumbnail((THUMB, THUMB))
            pics.append((img, p.relative_to(draft.root).as_posix()))
    if pics:
        text += "\n\nClick a photo below, then remove it or move it to its right class."
    return text, pics, classes


def build(ctx: AppContext, tab: gr.Tab, visible: bool = True) -> BuilderRefs:
    """Lay out the builder (inside the Train tab's dataset column) and wire its events; returns its panel."""
    with gr.Column(visible=visible, elem_id="builder") as panel:
        gr.Markdown("Name a class, add its photos, then the next class. Photos from a phone: the file picker "
                    "offers its camera.", elem_classes="fd-note")
        with gr.Row(equal_height=True):
            name = gr.Textbox(label="New class", placeholder="e.g. rose", scale=3, elem_id="builder-name",
                              max_lines=1)
            add_btn = gr.Button("Add class", scale=1, elem_id="builder-add-class")
        classes = gr.Radio([], label="Classes", info="the class that new photos go to", elem_id="builder-classes")
        with gr.Row():
            files = gr.File(label="Drop photos here, or click to pick them", file_count="multiple",
                            file_types=["image"], type="filepath", height=120, elem_id="builder-files", min_width=200)
            with gr.Column(min_width=200):
                camera = gr.Image(label="Camera", sources=["webcam"], type="numpy", height=200,
                                  webcam_options=gr.WebcamOptions(mirror=False,
                                                                  constraints={"video": {"facingMode": "environment"}}),
                                  elem_id="builder-camera")
                snap_btn = gr.Button("Add this photo", size="sm", elem_id="builder-snap")
        report_md = gr.Markdown(elem_id="builder-report")
        gallery = gr.Gallery(label="Photos", columns=6, height=220, object_fit="cover", fit_columns=False,
                             interactive=False, allow_preview=False, elem_id="builder-gallery")
        shown = gr.State([])
        chosen = gr.Textbox(visible=False)
        with gr.Row():
            remove_btn = gr.Button("Remove the selected photo", size="sm", elem_id="builder-remove")
            download_btn = gr.Button("Download as .zip", size="sm", elem_id="builder-download")
        zipped = gr.File(label="Your photos as a .zip (one folder per class: what `flowerdemo train` reads)",
                         visible=False, interactive=False)
        with gr.Accordion("Rename or delete this class · load a .zip", open=False):
            with gr.Row(equal_height=True):
                new_name = gr.Textbox(label="New name for this class", max_lines=1, scale=3)
                rename_btn = gr.Button("Rename", size="sm", scale=1)
            delete_btn = gr.Button("Delete this class and its photos", size="sm", variant="stop",
                                   elem_id="builder-delete")
            with gr.Row(visible=False) as confirm_row:  # asked first: the photos cannot be brought back
                confirm_text = gr.Markdown(elem_id="builder-delete-question")
                confirm_btn = gr.Button("Yes, delete them", variant="stop", size="sm", elem_id="builder-delete-yes")
                keep_btn = gr.Button("Keep them", size="sm", elem_id="builder-delete-no")
            load_zip = gr.File(label="Load a .zip of class folders (replaces the photos here)", file_types=[".zip"],
                               type="filepath", height=90)
            load_folder = gr.Textbox(label="…or a folder on this server (replaces the photos here)", max_lines=1,
                                     visible=bool(ctx.settings.data_dirs))
        with gr.Column(visible=False) as check_box:  # filled by "Check the dataset" (wire_check)
            found_md = gr.Markdown(elem_id="builder-findings")
            # only when the findings name photos: a check that found only "too few photos" showed an empty gallery
            # with Remove and Move buttons (a walkthrough)
            with gr.Column(visible=False) as fix_box:
                suspects = gr.Gallery(label="Photos the check names", columns=6, height=180, object_fit="cover",
                                      fit_columns=False, interactive=False, allow_preview=False,
                                      elem_id="builder-suspects")
                with gr.Row(equal_height=True):
                    drop_btn = gr.Button("Remove this photo", size="sm", elem_id="builder-drop")
                    move_to = gr.Dropdown([], label="Move it to", scale=2, min_width=120)
                    move_btn = gr.Button("Move", size="sm", elem_id="builder-move")
            suspect = gr.Textbox(visible=False)  # class/photo of the selected thumbnail

    outs = [classes, gallery, report_md, shown, chosen]

    def act(doing: str, fn, *args, request: gr.Request | None = None):
        draft = draft_for(ctx, request)
        prune_now(ctx, draft.area)
        try:
            return fn(draft, *args)
        except Exception as exc:
            raise ui_error(exc, doing, title="Photos") from None

    def show(cls: str | None = None, request: gr.Request = None):
        return act("Showing the photos", lambda d: render(d, cls), request=request)

    def add_class(text: str, request: gr.Request = None):
        def go(d):
            made = d.add_class(text)
            return (*render(d, made, f"Class *{md(made)}* added: now add its photos."), "")
        return act("Adding a class", go, request=request)

    def add_files(cls: str | None, paths: list[str] | None, request: gr.Request = None):
        def go(d):
            done = d.add_photos(cls, [(p, Path(p).name) for p in paths or []])
            return (*render(d, cls, added_note(done, cls)), None)
        return act("Adding photos", go, request=request)

    def add_frame(cls: str | None, frame, request: gr.Request = None):
        def go(d):
            if frame is None:
                raise ValueError("take a photo with the camera first, then press Add this photo")
            done = d.add_photos(cls, [(frame, "camera")])
            return (*render(d, cls, added_note(done, cls)), None)  # the camera goes live again: the next one
        return act("Adding a camera photo", go, request=request)

    def pick(names: list[str], evt: gr.SelectData):
        return names[evt.index] if isinstance(evt.index, int) and 0 <= evt.index < len(names) else ""

    def remove(cls: str | None, photo: str, names: list[str] | None = None, request: gr.Request = None):
        def go(d):
            if not photo:
                raise ValueError("click a photo first to select it, then remove it")
            d.remove_photo(cls, photo)
            *out, left, _ = render(d, cls, f"Removed a photo from *{md(cls)}*.")
            # Gradio's gallery keeps its frame at the same place, on the next photo now (it cannot be cleared from
            # here: an update of selected_index is not applied), so that photo is the one selected: what is
            # framed is what Remove removes (the frame showed, and Remove said to click a photo first)
            at = names.index(photo) if names and photo in names else None
            return (*out, left, left[min(at, len(left) - 1)] if at is not None and left else "")
        return act("Removing a photo", go, request=request)

    def rename(cls: str | None, text: str, request: gr.Request = None):
        def go(d):
            made = d.rename_class(cls, text)
            return (*render(d, made, f"*{md(cls)}* is now *{md(made)}*."), "")
        return act("Renaming a class", go, request=request)

    def delete(cls: str | None, request: gr.Request = None):
        def go(d):
            n = d.delete_class(cls)
            return render(d, None, f"Deleted *{md(cls)}* and its {n} photo{'s' if n != 1 else ''}.")
        return act("Deleting a class", go, request=request)

    def ask_delete(cls: str | None, request: gr.Request = None):
        """The question before a class goes: which class, how many photos, and that it cannot be undone."""
        def go(d):
            found = next((c for c in d.classes() if c.name == cls), None)
            if found is None:
                raise ValueError("pick the class to delete in the list first")
            n = found.count
            return gr.update(visible=True), (f"Delete *{md(cls)}* and its {n} photo{'s' if n != 1 else ''} for good? "
                                             "This cannot be undone.")
        return act("Deleting a class", go, request=request)

    def download(request: gr.Request = None):
        def go(d):
            if not d.classes():
                raise ValueError("there is nothing to download yet: add a class and its photos first")
            return gr.update(value=str(d.to_zip(ctx.settings.folder("downloads") / uuid.uuid4().hex)), visible=True)
        return act("Making the .zip", go, request=request)

    def load(zip_path: str | None, folder: str = "", request: gr.Request = None):
        def go(d):
            source = Path(zip_path) if zip_path else allowed_path(folder, ctx.settings.data_dirs)
            done = d.load(source, ctx.settings.max_extract_mb * MB, shown=source.name)
            note = f"Loaded {len(done.added):,} photos in {len(done.classes)} classes from {md(source.name)}."
            refused = added_note(Added((), done.refused), "")
            return (*render(d, None, f"{note} {refused}".strip()), None)
        return act("Loading photos", go, request=request)

    check_outs = [check_box, found_md, suspects, suspect, move_to, fix_box]

    def report_check(d: DatasetDraft) -> tuple:
        text, pics, names = findings(d)
        return gr.update(visible=True), text, pics, "", gr.update(choices=names, value=None), gr.update(visible=bool(pics))

    def check(source: str = "builder", request: gr.Request = None):
        if source != "builder":
            return gr.update(visible=False), "", [], "", gr.update(), gr.update(visible=False)
        return act("Checking the photos", report_check, request=request)

    def fix(which: str, to: str | None = None, cls: str | None = None, request: gr.Request = None):
        def go(d):
            if "/" not in (which or ""):
                raise ValueError("click one of the photos the check names first")
            where, photo = which.split("/", 1)
            if to:
                d.move_photo(where, photo, to)
                note = f"Moved a photo from *{md(where)}* to *{md(to)}*."
            else:
                d.remove_photo(where, photo)
                note = f"Removed a photo from *{md(where)}*."
            return (*render(d, cls, note), *report_check(d))
        return act("Fixing the dataset", go, request=request)

    def pick_suspect(evt: gr.SelectData):
        return (evt.value or {}).get("caption") or ""

    suspects.select(pick_suspect, None, suspect, show_progress="hidden")
    def drop(which: str, cls: str | None = None, request: gr.Request = None):
        return fix(which, None, cls, request)

    # progress, and a refusal's badge, on the line that says what happened (report_md, or the check's findings): on
    # every output, a refused action (a photo removed before one was selected, a name taken) drew a red "Error"
    # badge over the class list, the photos and the status, hiding them until each badge was closed
    on_report, on_findings = dict(show_progress_on=[report_md]), dict(show_progress_on=[found_md])
    # the events that change the photos (after_edit): the fixes check again, the other edits leave the findings stale
    fixes = [drop_btn.click(drop, [suspect, classes], [*outs, *check_outs], api_name="builder_remove_checked",
                            **on_findings),
             move_btn.click(fix, [suspect, move_to, classes], [*outs, *check_outs], api_name="builder_move_checked",
                            **on_findings)]
    edits = []

    def wire_check(button: gr.Button, source: gr.Radio) -> None:
        button.click(check, source, check_outs, api_name="builder_check", **on_findings)

    def listing(request: gr.Request = None) -> dict:
        """This visitor's classes with their photos' names (newest first), and what is missing before training."""
        draft = draft_for(ctx, request)
        ready = draft.readiness()
        return {"classes": {c.name: [p.name for p in c.photos] for c in draft.classes()}, "ready": ready.ready,
                "todo": list(ready.todo), "advice": list(ready.advice)}

    gr.api(listing, api_name="builder_list")
    tab.select(show, classes, outs, api_name="builder_show", show_progress="hidden")
    classes.input(show, classes, outs, show_progress="hidden")
    edits += [gr.on([add_btn.click, name.submit], add_class, name, [*outs, name], api_name="builder_add_class", **on_report)]
    edits += [files.upload(add_files, [classes, files], [*outs, files], api_name="builder_add_photos", **on_report)]
    edits += [snap_btn.click(add_frame, [classes, camera], [*outs, camera], api_name="builder_add_camera", **on_report)]
    gallery.select(pick, shown, chosen, show_progress="hidden")
    edits += [remove_btn.click(remove, [classes, chosen, shown], outs, api_name="builder_remove_photo", **on_report)]
    edits += [gr.on([rename_btn.click, new_name.submit], rename, [classes, new_name], [*outs, new_name],
          api_name="builder_rename_class", **on_report)]
    delete_btn.click(ask_delete, classes, [confirm_row, confirm_text], api_visibility="private", **on_report)
    hide = dict(fn=lambda: gr.update(visible=False), inputs=None, outputs=confirm_row, api_visibility="private",
                queue=False)
    keep_btn.click(**hide)
    classes.change(**hide)  # another class picked: the question was about the one before
    deleted = confirm_btn.click(delete, classes, outs, api_name="builder_delete_class", **on_report)
    deleted.then(**hide)
    edits.append(deleted)
    download_btn.click(download, None, zipped, api_name="builder_download")
    edits += [gr.on([load_zip.upload, load_folder.submit], load, [load_zip, load_folder], [*outs, load_zip],
          api_name="builder_load", **on_report)]

    def findings_changed(text: str):
        """The check's findings after an edit that did not check again ("Class 'tulip' has only 8 photos" stayed
        when it had 9; a walkthrough)."""
        return f"{STALE_FINDINGS}\n\n{text}" if text and not text.startswith(STALE_FINDINGS) else gr.skip()

    for event in edits:
        event.success(findings_changed, found_md, found_md, api_visibility="private", show_progress="hidden",
                      queue=False)

    def after_edit(fn: Callable, inputs: list, outputs: list) -> None:
        for event in [*fixes, *edits]:
            event.success(fn, inputs, outputs, api_visibility="private", show_progress="hidden", queue=False)

    return BuilderRefs(panel, wire_check, after_edit)
