"""The app in a real browser (Playwright driving headless Chromium): classify a photo and see the
label and the heatmap; train on a server folder and see the curves redrawn and the summary appear.

Skipped when the playwright package or a chromium binary is missing (FLOWERDEMO_CHROMIUM, else
`chromium` on PATH, else /usr/bin/chromium). With FLOWERDEMO_SCREENSHOTS=docs/screenshots it also
saves predict.png and train.png there, using checkpoints/flowers5-lite2 when that model exists
(training is always on synthetic shapes: pictures of other people's photos are not ours to commit).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest

from flowerdemo.models.checkpoints import read_meta
from flowerdemo.serve.runs import DEFAULT_RUN
from tests.synth import draw_sample, make_dataset
from tests.test_app import running_app, tiny_model
from ui.predict_tab import PREDICTED

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("FLOWERDEMO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.environ.get("FLOWERDEMO_SCREENSHOTS")
REAL_MODEL = REPO / "checkpoints" / DEFAULT_RUN
EPOCHS = 8
TIMEOUT_MS = 120_000  # a busy 2-core machine; a healthy run takes seconds

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no chromium binary at {CHROMIUM}")

# Every mutation of the loss plot: record its first line's path whenever it changes.
WATCH_LOSS = """() => {
  window.lossPaths = [];
  const plot = document.querySelector('#train-loss');
  new MutationObserver(() => {
    const line = plot.querySelector('.mark-line path');
    const d = line && line.getAttribute('d');
    if (d && window.lossPaths[window.lossPaths.length - 1] !== d) window.lossPaths.push(d);
  }).observe(plot, {subtree: true, childList: true, attributes: true});
}"""


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    if SHOTS and (REAL_MODEL / "model.safetensors").is_file():
        return REAL_MODEL  # the README's pictures show the shipped flowers model
    return tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("browser-app")
    with running_app(root, model) as (demo, url):
        yield url, root


@pytest.fixture(scope="module")
def page(app_url):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            sync_api.expect.set_options(timeout=TIMEOUT_MS)  # assertions wait as long as actions
            page.goto(app_url[0])
            yield page
        finally:
            browser.close()


def shot(page, name: str) -> None:
    if SHOTS:
        out = Path(SHOTS)
        out.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(500)  # let plots and images finish their transitions
        page.screenshot(path=str(out / name), full_page=True)


def test_predict_shows_the_label_and_the_heatmap(page, model, tmp_path):
    classes = read_meta(model)["classes"]
    if model == REAL_MODEL:
        image = REPO / "examples" / "sunflower.jpg"
    else:
        image = tmp_path / "square.png"
        draw_sample("square", 224, random.Random(3)).save(image)
    page.locator("#predict-image input[type=file]").set_input_files(str(image))

    timing = page.locator("#predict-timing")
    sync_api.expect(timing).to_contain_text("Heatmap check")  # classified on upload, heatmap and its check shown
    # "daisy (99.0%) · ..." or, for a photo declined as none of the classes, "closest class daisy (41.0%), ..."
    # (while the stream is still closing, Gradio's progress timer, e.g. "0.1s", may precede it)
    top = re.search(r"^(?:closest class )?(\S+) \(\d", timing.inner_text().strip(), re.MULTILINE).group(1)
    assert top in classes
    label = page.locator("#predict-label")
    sync_api.expect(label).to_contain_text(top)
    for name in classes[:3]:
        sync_api.expect(label).to_contain_text(name)  # every class with its probability
    for output in ("#predict-overlay", "#predict-heatmap"):
        img = page.locator(f"{output} img")
        sync_api.expect(img).to_be_visible()
        assert page.evaluate("(el) => el.naturalWidth", img.element_handle()) > 0  # an image that loaded
    shot(page, "predict.png")

    # another CAM method picked with the mouse runs the prediction once (a mouse choice also fires the
    # dropdown's .input as its list closes: two identical runs before it listened to .select)
    joins: list[str] = []
    page.on("request", lambda r: joins.append(r.url) if "queue/join" in r.url else None)
    page.locator("#predict-method input").click()
    page.get_by_role("option", name=re.compile(r"^gradcam\+\+")).click()
    sync_api.expect(timing).to_contain_text("gradcam++ for")
    sync_api.expect(timing).to_contain_text("Heatmap check")
    page.wait_for_timeout(1500)  # a second run would have been sent by now
    assert len(joins) == 1, joins

    # an opacity typed into the slider's box re-blends the overlay on the server without running the model
    ids = _dependency_ids(page.url)
    sent: list[int] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data or "{}").get("fn_index"))
            if "queue/join" in r.url else None)
    before = page.locator("#predict-overlay img").get_attribute("src")
    page.locator("#predict-alpha input[type=number]").fill("0.9")
    page.locator("#predict-alpha input[type=number]").press("Enter")
    sync_api.expect(page.locator("#predict-overlay img")).not_to_have_attribute("src", before)
    # the slider's reset button sets the value without an input event: the overlay follows it too
    reblended = page.locator("#predict-overlay img").get_attribute("src")
    page.locator("#predict-alpha [data-testid=reset-button]").click()
    sync_api.expect(page.locator("#predict-overlay img")).not_to_have_attribute("src", reblended)
    page.wait_for_timeout(1000)
    assert ids["reblend"] & set(sent) and not ids["predict"] & set(sent), sent

    # a class picked to explain is explained for this photo; a new photo is explained for its own answer
    other = next(c for c in classes if c != top)
    page.locator("#predict-target input").click()
    page.get_by_role("option", name=other, exact=True).click()
    sync_api.expect(timing).to_contain_text(f"for {other}")
    sync_api.expect(timing).to_contain_text("Heatmap check")
    page.locator("#predict-image input[type=file]").set_input_files(str(image))
    sync_api.expect(timing).to_contain_text(f"for {top}")
    sync_api.expect(page.locator("#predict-target input")).to_have_value(PREDICTED)


def _dependency_ids(url: str) -> dict[str, set[int]]:
    """api_name -> the ids the page sends as fn_index when it runs that endpoint (from the app's /config)."""
    import urllib.request

    with urllib.request.urlopen(url.split("?")[0].rstrip("/") + "/config") as answer:
        config = json.load(answer)
    ids: dict[str, set[int]] = {}
    for dep in config["dependencies"]:
        ids.setdefault(dep.get("api_name") or "", set()).add(dep["id"])
    return ids


def test_a_photo_of_none_of_the_classes_is_answered_so(page, model, tmp_path):
    import numpy as np
    from PIL import Image

    classes = read_meta(model)["classes"]
    noise = tmp_path / "texture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize(
        (160, 160), Image.Resampling.BICUBIC).save(noise)
    page.locator("#predict-image input[type=file]").set_input_files(str(noise))
    verdict = page.locator("#predict-verdict")
    sync_api.expect(verdict).to_contain_text(f"Not one of the {len(classes)} classes this model knows")
    sync_api.expect(verdict).to_contain_text(", ".join(classes))
    sync_api.expect(page.locator("#predict-label")).to_contain_text("none of them")  # probabilities, labelled so
    sync_api.expect(page.locator("#predict-classes")).to_contain_text(f"knows {len(classes)} classes")
    shot(page, "predict-rejected.png")


# visible elements whose right edge passes the window's and that no scrolling ancestor lets one reach
CUT_OFF = """() => {
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.right <= window.innerWidth + 1) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.display === "none") continue;
    let scrolls = false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === "auto" || o === "scroll") { scrolls = true; break; }
      if (o === "hidden" && a.getBoundingClientRect().right <= window.innerWidth + 1) { scrolls = false; break; }
    }
    if (!scrolls) out.push((el.id ? "#" + el.id : el.tagName.toLowerCase()) + " right=" + Math.round(r.right));
  }
  return out.slice(0, 10);
}"""


def test_a_photo_given_as_the_page_loads_is_classified_once(page, app_url, model, tmp_path):
    """The page's load sets the model up without running /predict (it used to set the active model, whose
    .change ran /predict again: twice for a photo dropped while the page loaded); the hint says what to do
    before any photo, and the Models tab shows the active model from the load on."""
    predict_ids = _dependency_ids(app_url[0])["predict"]
    image = tmp_path / "early.png"
    draw_sample("square", 224, random.Random(5)).save(image)
    runs: list[dict] = []

    def on_request(request) -> None:
        if "queue/join" in request.url:
            body = json.loads(request.post_data or "{}")
            if body.get("fn_index") in predict_ids:
                runs.append(body)

    def this_page() -> list[dict]:  # the runs of this page's session (the page before the goto may still send some)
        mine = {r["session_hash"] for r in runs if isinstance(r["data"][0], dict)
                and r["data"][0].get("orig_name") == "early.png"}
        return [r for r in runs if r["session_hash"] in mine]

    page.on("request", on_request)
    try:
        page.goto(app_url[0])
        timing = page.locator("#predict-timing")
        sync_api.expect(timing).to_contain_text("it is classified at once")  # before any photo, without a run
        page.locator("#predict-image input[type=file]").set_input_files(str(image))
        sync_api.expect(timing).to_contain_text("Heatmap check")
        page.wait_for_timeout(1500)  # a second run would have been sent by now
        assert len(this_page()) == 1, runs
        # another photo in its place: one run too (the photo's .change fired twice on a replacement)
        other = tmp_path / "second.png"
        draw_sample("triangle", 224, random.Random(6)).save(other)
        page.locator("#predict-image input[type=file]").set_input_files(str(other))
        page.wait_for_timeout(4000)  # the duplicate went out at the same moment as the first
        assert len(this_page()) == 2, runs
        # an example picked: loaded, then predicted once (its own event: examples set the photo without .input)
        predict_ids.update(*(ids for name, ids in _dependency_ids(app_url[0]).items() if name.startswith("predict")))
        page.locator(".gallery-item").first.click()
        for _ in range(240):  # up to a minute on a busy machine
            if len(this_page()) > 2:
                break
            page.wait_for_timeout(250)
        page.wait_for_timeout(1500)
        assert len(this_page()) == 3, runs
        sync_api.expect(timing).to_contain_text("Heatmap check")
        page.get_by_role("tab", name="Models").click()
        sync_api.expect(page.locator("#models-active")).to_contain_text(f"Classes: {', '.join(read_meta(model)['classes'])}")
    finally:
        page.remove_listener("request", on_request)
        page.goto(app_url[0])


def test_the_model_a_visitor_picked_is_still_theirs_after_a_reload(page, app_url, model):
    """The browser keeps the visitor's model (gr.BrowserState): after a reload it is active again; another
    browser still gets the default; once the run is gone, a reload says so and falls back to the default."""
    second = app_url[1] / "checkpoints" / "second-shapes"  # one more of the operator's runs, not the default
    shutil.copytree(model, second)
    browser = page.context.browser
    mine, theirs = browser.new_context(), browser.new_context()  # their own storage, not the module's page's
    try:
        tab = mine.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(app_url[0])
        chooser = tab.locator("#predict-model input")
        sync_api.expect(chooser).to_have_value(re.compile(r"^default"))
        stored = "() => localStorage.getItem('flowerdemo-model')"
        before = tab.evaluate(stored)
        chooser.click()
        tab.get_by_role("option", name=re.compile(r"^second-shapes")).click()
        sync_api.expect(chooser).to_have_value(re.compile(r"^second-shapes"))
        tab.wait_for_function(f"(before) => ({stored})() !== before", arg=before)  # the browser has stored it
        picked = tab.evaluate(stored)
        tab.reload()
        sync_api.expect(chooser).to_have_value(re.compile(r"^second-shapes"))
        other = theirs.new_page()
        other.set_default_timeout(TIMEOUT_MS)
        other.goto(app_url[0])
        sync_api.expect(other.locator("#predict-model input")).to_have_value(re.compile(r"^default"))
        shutil.rmtree(second)
        tab.reload()
        gone = tab.get_by_text("The model you used last is not on this server")
        sync_api.expect(gone).to_be_visible()
        sync_api.expect(chooser).to_have_value(re.compile(r"^default"))
        tab.wait_for_function(f"(picked) => ({stored})() !== picked", arg=picked)  # forgotten
        tab.reload()  # said once, not on every load
        sync_api.expect(chooser).to_have_value(re.compile(r"^default"))
        tab.wait_for_timeout(1500)
        assert gone.count() == 0
    finally:
        mine.close()
        theirs.close()
        shutil.rmtree(second, ignore_errors=True)


def test_deleting_ones_model_asks_first(page, app_url, model):
    """Delete cannot be undone: it asks (naming the model), Keep leaves it, Yes deletes it."""
    checkpoints = app_url[1] / "checkpoints"
    before = {p.name for p in checkpoints.iterdir()}
    context = page.context.browser.new_context()
    try:
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(app_url[0])
        tab.get_by_role("tab", name="Models").click()
        tab.locator("#models-upload input[type=file]").set_input_files(str(model / "model.safetensors"))
        sync_api.expect(tab.get_by_text("it is yours and now active")).to_be_visible()
        (run,) = {p.name for p in checkpoints.iterdir()} - before
        question = tab.locator("#models-delete-question")
        tab.locator("#models-delete").click()
        sync_api.expect(question).to_contain_text("cannot be undone")
        tab.locator("#models-delete-no").click()
        sync_api.expect(question).to_be_hidden()
        tab.wait_for_timeout(500)
        assert (checkpoints / run).is_dir()  # kept
        tab.locator("#models-delete").click()
        tab.locator("#models-delete-yes").click()
        sync_api.expect(tab.locator("#models-mine-status")).to_contain_text("Deleted")
        sync_api.expect(question).to_be_hidden()
        assert not (checkpoints / run).exists()
    finally:
        context.close()


def test_on_a_phone_the_answer_is_visible_after_an_upload(page, app_url, model, tmp_path):
    """390x844, the issue's phone: after an upload the verdict and the probabilities are on screen
    without scrolling."""
    classes = read_meta(model)["classes"]
    image = tmp_path / "phone.png"
    draw_sample("circle", 224, random.Random(4)).save(image)
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        page.goto(app_url[0])
        # Classify with no photo, pressed as soon as the page shows: the page's text says so far up, so a toast
        # says it where the visitor looks, once (when the page's load still ran /predict, the press and the
        # load's run shared one queued trigger: the toast came twice in one run and not at all in another)
        page.get_by_role("button", name="Classify").click()
        toast = page.get_by_text("There is no photo yet")
        sync_api.expect(toast).to_be_in_viewport()
        page.wait_for_timeout(1000)
        assert toast.count() == 1
        page.locator("#predict-image input[type=file]").set_input_files(str(image))
        verdict = page.locator("#predict-verdict")
        sync_api.expect(page.locator("#predict-label")).to_contain_text(classes[0])  # answered
        sync_api.expect(verdict).to_contain_text(re.compile(r"\w"))
        page.evaluate("window.scrollTo(0, 0)")
        sync_api.expect(verdict).to_be_in_viewport()
        sync_api.expect(page.locator("#predict-label")).to_be_in_viewport()
        shot(page, "predict-phone.png")
        for tab in ("Predict", "Train", "Models"):  # no dropdown, table or control cut off at the phone's width
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(300)
            assert page.evaluate(CUT_OFF) == [], f"cut off at 390 px on the {tab} tab"
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(app_url[0])


def test_a_refused_training_marks_one_box_not_every_output(page, app_url):
    """A training that is refused (busy, or here a folder that does not exist) says why in a toast and in the
    Progress box, and marks the progress bar under it: Gradio put an "Error" badge on each of the event's outputs
    (every plot, table and picture), and one on the Progress box hid its words."""
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Folder on this server").check()
    page.locator("#train-folder textarea, #train-folder input").first.fill(str(app_url[1] / "data" / "no-such-folder"))
    badges = page.get_by_role("tabpanel").get_by_text("Error", exact=True)  # not the toast's title
    try:
        page.locator("#train-start").click()
        sync_api.expect(page.get_by_text("no-such-folder is not an existing folder").first).to_be_visible()
        sync_api.expect(page.locator("#train-status")).to_contain_text("Not started. ")
        sync_api.expect(page.locator("#train-status")).to_contain_text("no-such-folder is not an existing folder")
        sync_api.expect(page.locator("#train-progress").get_by_text("Error", exact=True)).to_be_visible()
        page.wait_for_timeout(500)
        assert badges.count() == 1, f"{badges.count()} error badges"
    finally:
        page.goto(app_url[0])


def test_training_from_a_server_folder_draws_curves_and_a_summary(page, app_url):
    data = make_dataset(app_url[1] / "data" / "shapes", per_class=12, size=64, seed=2)
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Folder on this server").check()
    page.locator("#train-folder textarea, #train-folder input").first.fill(str(data))
    page.get_by_role("button", name="Check the dataset").click()
    sync_api.expect(page.get_by_text("Found 3 classes, 36 images")).to_be_visible()

    set_number(page, "#train-epochs", EPOCHS)
    page.get_by_text("Advanced options").click()
    set_number(page, "#train-image-size", 64)  # small and quick
    page.get_by_text("Advanced options").click()  # fold it away again (a shorter screenshot)

    page.evaluate(WATCH_LOSS)
    page.evaluate("window.scrollTo(0, 0)")
    sync_api.expect(page.locator("#train-status")).not_to_be_in_viewport()
    page.locator("#train-start").click()
    # the Progress box comes into view at once, not when the run has ended (~1,400 px below the button before)
    sync_api.expect(page.locator("#train-status")).to_be_in_viewport(timeout=3000)
    sync_api.expect(page.locator("#train-status")).not_to_contain_text("Done")
    summary = page.locator("#train-summary")
    sync_api.expect(summary).to_contain_text("Finished: best validation accuracy")
    sync_api.expect(page.locator("#train-status")).to_contain_text("Done")

    paths = page.evaluate("window.lossPaths")
    assert len(paths) >= 2, "the loss curve was not redrawn while training"
    assert paths[-1].count("L") + 1 == EPOCHS  # the final curve has one point per epoch
    legend = page.locator("#train-loss").inner_text()
    assert "train" in legend and "validation" in legend
    sync_api.expect(page.locator("#train-confusion img")).to_be_visible()
    page.mouse.move(0, 0)
    shot(page, "train.png")


def set_number(page, elem_id: str, value: int) -> None:
    """Type into a slider's number box (what a visitor does for an exact value). On a loaded machine a
    box that has just appeared (an accordion opening) can miss the first keystrokes: type again."""
    box, slider = page.locator(f"{elem_id} input[type=number]"), page.locator(f"{elem_id} input[type=range]")
    for _ in range(4):
        box.fill(str(value))
        box.press("Enter")
        try:
            sync_api.expect(slider).to_have_value(str(value), timeout=5_000)
            return
        except AssertionError:
            continue
    sync_api.expect(slider).to_have_value(str(value))


def test_on_a_phone_two_classes_made_here_from_files_and_the_camera_then_trained(page, app_url, tmp_path):
    """The issue's path at 390x844: name a class, add its photos (picked files, one from the camera), the next
    class, Start; the run trains on those photos. Its own browser: one with a fake camera."""
    photos = {kind: [] for kind in ("circle", "square")}
    for kind, files in photos.items():
        for i in range(3):
            files.append(tmp_path / f"{kind}-{i}.png")
            draw_sample(kind, 96, random.Random(10 + i)).save(files[-1])
    fake_camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    # the module's Playwright (a second sync_playwright() inside it is refused), a browser of its own
    browser = page.context.browser.browser_type.launch(executable_path=CHROMIUM, headless=True, args=fake_camera)
    try:
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.set_default_timeout(TIMEOUT_MS)
        phone.goto(app_url[0])
        phone.get_by_role("tab", name="Train").click()
        report = phone.locator("#builder-report")
        status = phone.locator("#train-status")
        phone.locator("#train-start").click()  # nothing to train on yet: refused in the Progress box…
        sync_api.expect(status).to_contain_text("Not started.")
        for kind, files in photos.items():
            phone.locator("#builder-name textarea, #builder-name input").first.fill(kind)
            phone.locator("#builder-add-class").click()
            sync_api.expect(report).to_contain_text(f"Class {kind} added")
            sync_api.expect(status).to_contain_text("Your photos changed.")  # …which the next edit replaces
            phone.locator("#builder-files input[type=file]").set_input_files([str(f) for f in files])
            sync_api.expect(report).to_contain_text(f"Added 3 photos to {kind}")
        camera = phone.locator("#builder-camera")
        camera.get_by_title("grant webcam access").click()
        camera.get_by_title("capture photo").click()  # a frame of the fake camera
        # the frame becomes the component's value asynchronously: "Add this photo" pressed before that sends no
        # photo and the app says to take one first (seen once in a full run): press it again, as a visitor would
        for attempt in range(4):
            phone.locator("#builder-snap").click()
            try:
                sync_api.expect(report).to_contain_text("Added 1 photo to square", timeout=15_000)
                break
            except AssertionError:
                if attempt == 3:
                    raise
        sync_api.expect(phone.locator("#builder-classes")).to_contain_text("square · 4")
        sync_api.expect(phone.locator("#builder-gallery img")).to_have_count(4)
        sync_api.expect(report).to_contain_text("Ready to train on 7 photos in 2 classes")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
        # the dataset check, then one more photo: the Progress box no longer says the 7 photos were checked
        phone.locator("#train-check").click()
        sync_api.expect(status).to_contain_text("Checked: 7 photos in 2 classes")
        extra = tmp_path / "circle-3.png"
        draw_sample("circle", 96, random.Random(20)).save(extra)
        phone.locator("#builder-classes").get_by_text("circle · 3").click()
        phone.locator("#builder-files input[type=file]").set_input_files([str(extra)])
        sync_api.expect(report).to_contain_text("Added 1 photo to circle")
        sync_api.expect(status).to_contain_text("Your photos changed. Press Check the dataset")
        sync_api.expect(phone.locator("#builder-findings")).to_contain_text("Out of date")  # the builder's findings too

        # a mistake (no photo selected) is said in a toast and marks the status line, not every box of the builder
        badges = phone.get_by_role("tabpanel").get_by_text("Error", exact=True)
        phone.locator("#builder-remove").click()
        sync_api.expect(phone.get_by_text("click a photo first").first).to_be_visible()
        sync_api.expect(phone.locator("#builder-report").get_by_text("Error", exact=True)).to_be_visible()
        phone.wait_for_timeout(500)
        assert badges.count() == 1, f"{badges.count()} error badges"
        # deleting a class asks first; Keep keeps it
        phone.get_by_text("Rename or delete this class").click()
        phone.locator("#builder-delete").click()
        sync_api.expect(phone.locator("#builder-delete-question")).to_contain_text(
            "Delete circle and its 4 photos for good?")  # the class picked last: circle
        phone.locator("#builder-delete-no").click()
        sync_api.expect(phone.locator("#builder-delete-question")).to_be_hidden()
        sync_api.expect(phone.locator("#builder-classes")).to_contain_text("circle · 4")

        set_number(phone, "#train-epochs", 2)
        phone.locator("#train-start").click()
        summary = phone.locator("#train-summary")
        # decode, features, 2 epochs, calibration and the unknown-photo detector, beside other jobs on 2 cores
        sync_api.expect(summary).to_contain_text("Finished: best validation accuracy", timeout=3 * TIMEOUT_MS)
        run = re.search(r"Saved as (\S+)", summary.inner_text()).group(1)
        counts = read_meta(app_url[1] / "checkpoints" / run)["data"]["counts"]
        assert {c: counts["train"][c] + counts["val"][c] for c in counts["train"]} == {"circle": 4, "square": 4}
        shot(phone, "train-builder-phone.png")
    finally:
        browser.close()
