"""Tests for flowerdemo.hub: model card, repo ids, push/pull round trip against an in-memory fake Hub, and
error messages from the real huggingface_hub client talking to a loopback server (no internet)."""

from __future__ import annotations

import fnmatch
import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from flowerdemo.models import hub
from flowerdemo.models.checkpoints import load_checkpoint, save_checkpoint
from flowerdemo.models.hub import HubError, check_repo_id, model_card, pull_checkpoint, push_checkpoint
from flowerdemo.models.registry import build_model

CLASSES = ["daisy", "rose", "tulip"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    for var in ("HF_TOKEN", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # never a saved login token


def fake_meta() -> dict:
    return {"architecture": "efficientnet_lite0", "classes": CLASSES,
            "head": {"kind": "mlp", "hidden": 256, "dropout": 0.2},
            "config": {"model": "efficientnet_lite0", "epochs": 3, "val_fraction": 0.2, "augment": {"hflip": True}},
            "data": {"root": "/home/someone/private/flower_photos", "presplit": False, "skipped": 1,
                     "counts": {"train": {"daisy": 8, "rose": 7, "tulip": 9}, "val": {"daisy": 2, "rose": 2, "tulip": 2}}},
            "metrics": {"best_val_acc": 0.8333, "best_epoch": 2, "epochs_run": 3, "macro_f1": 0.8222,
                        "per_class": {c: {"precision": 0.9, "recall": 0.75, "f1": 0.818, "support": 2} for c in CLASSES},
                        "confusion_matrix": [[2, 0, 0], [1, 1, 0], [0, 0, 2]], "classes": CLASSES}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", len(CLASSES), pretrained=False)
    meta = {**fake_meta(), "preprocessing": model.spec.preprocessing.to_dict()}
    return save_checkpoint(tmp_path_factory.mktemp("runs") / "run1", model, meta)


class FakeHub:
    """In-memory Hub: HfApi stand-in for push, snapshot_download stand-in for pull."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.calls: list[tuple] = []

    def api(self, token=None):
        hub_ = self

        class Api:
            def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
                hub_.calls.append(("create_repo", repo_id, private, exist_ok, token))
                hub_.repos.setdefault(repo_id, {})
                return f"https://huggingface.co/{repo_id}"

            def create_commit(self, repo_id, operations, commit_message, repo_type=None):
                hub_.calls.append(("create_commit", repo_id, commit_message))
                for op in operations:
                    data = op.path_or_fileobj
                    hub_.repos[repo_id][op.path_in_repo] = data if isinstance(data, bytes) else Path(data).read_bytes()

        return Api()

    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, local_dir, allow_patterns, token=None):
        self.calls.append(("snapshot_download", repo_id, revision, tuple(allow_patterns)))
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        for name, data in self.repos[repo_id].items():
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (Path(local_dir) / name).write_bytes(data)
        return str(local_dir)


@pytest.fixture
def fake_hub(monkeypatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(hub, "HfApi", fake.api)
    monkeypatch.setattr(hub, "snapshot_download", fake.snapshot_download)
    return fake


def test_model_card_lists_classes_metrics_usage_and_limits():
    card = model_card(fake_meta())
    front = card.split("---")[1]
    assert "library_name:" in front and "- image-classification" in front and "- flowerdemo" in front
    assert "license: apache-2.0" in front
    for c in CLASSES:
        assert f"`{c}`" in card and f"| {c} | 0.900 | 0.750 | 0.818 | 2 |" in card
    # an older meta without a count: the confusion matrix gives it (5 of 6 right)
    assert "**83.3% (5/6; 95% interval 44–97%)** (epoch 2 of 3)" in card
    assert "| rose | 1 | 1 | 0 |" in card  # confusion-matrix row
    assert "| daisy | 8 | 2 |" in card  # data counts
    assert "python -m flowerdemo predict --checkpoint checkpoints/OWNER--NAME img.jpg" in card
    assert "load_checkpoint(\"checkpoints/OWNER--NAME\")" in card and "pull_checkpoint('OWNER/NAME'" in card
    assert "forced into one of them" in card and "no detector" in card  # no detector stored
    assert "## Calibration" not in card and "## Photos of none of these classes" not in card
    assert "## Heatmaps" not in card and "reliability.png" not in card
    assert "from flowerdemo.infer.predict import classify, predict" in card and ".familiarity.known" in card
    assert "/home/someone" not in card and "`flower_photos`" in card  # no local paths published
    assert "20% of each class held out" in card and "| epochs | 3 |" in card


def test_model_card_survives_a_checkpoint_saved_mid_training():
    meta = {k: v for k, v in fake_meta().items() if k not in ("data", "config")}
    meta["metrics"] = {"best_val_acc": 0.5, "best_epoch": 1}
    card = model_card(meta)
    assert "**50.0%** (epoch 1)" in card and "confusion" not in card.lower() and "interval" not in card


def calibration(temperature: float = 0.667) -> dict:
    """A calibration block as calibration_summary writes it: figures before/after and 15 bins each."""
    bins = [{"lower": round(b / 15, 4), "upper": round((b + 1) / 15, 4), "count": 0, "confidence": None,
             "accuracy": None} for b in range(15)]
    filled = [{**b, "count": 40, "confidence": 0.95, "accuracy": 0.9} if i == 14 else b for i, b in enumerate(bins)]
    return {"temperature": temperature, "fitted_on": "validation split (496 photos)",
            "before": {"ece": 0.0802, "nll": 0.2054, "brier": 0.0754, "confidence": 0.8855, "accuracy": 0.9657,
                       "count": 496},
            "after": {"ece": 0.0165, "nll": 0.1581, "brier": 0.0678, "confidence": 0.9599, "accuracy": 0.9657,
                      "count": 496},
            "reliability": {"before": filled, "after": filled}}


def trusted_meta() -> dict:
    """A checkpoint of today: count and interval, calibration, the unknown-photo detector, CAM ranking, trust."""
    meta = fake_meta()
    meta["metrics"] = {**meta["metrics"], "accuracy": 0.9657, "correct": 479, "total": 496,
                       "accuracy_interval": [0.9458, 0.9785], "rough": True,
                       "warning": "The validation split has only 2 photos of daisy: the accuracy is rough."}
    meta["calibration"] = calibration()
    meta["unknown"] = {"method": "knn-cosine", "encoder": "efficientnet_lite0", "input_size": 224, "k": 10,
                       "thresholds": {"strict": 0.4156, "normal": 0.4554, "lenient": 0.5611},
                       "shares": {"strict": 0.9, "normal": 0.95, "lenient": 0.99}, "bank_photos": 1986,
                       "thresholds_from": "validation split (496 photos)", "confidence": 0.9,
                       "val_accepted": {"strict": 0.9153, "normal": 0.9637, "lenient": 0.998}}
    meta["cam_ranking"] = ["gradcam++", "layercam", "gradcam"]
    meta["trust"] = {"auroc": 0.9531, "normal": {"threshold": 0.4554, "flowers_accepted_cross_fitted": 0.948,
                                                 "flowers_accepted_validation": 0.95,
                                                 "non-flower photos_accepted": 0.031},
                     "sets": {"validation flowers": 496, "non-flower photos": 27},
                     "calibration_cross_fitted": {"ece_calibrated_mean": 0.0264, "ece_calibrated_max": 0.0455,
                                                  "ece_uncalibrated_mean": 0.0816, "halves": 10}}
    return meta


def test_model_card_states_interval_calibration_detector_and_heatmaps():
    card = model_card(trusted_meta())
    assert "**96.6% (479/496; 95% interval 95–98%)** (epoch 2 of 3)" in card
    assert "**Rough figure.** The validation split has only 2 photos of daisy" in card
    cal = card[card.index("## Calibration"):card.index("## Photos of none")]
    assert "T = 0.667" in cal and "validation split (496 photos)" in cal and "optimistic" in cal
    assert "| raw (T = 1) | 0.0802 | 0.2054 | 0.0754 |" in cal and "| calibrated (T = 0.667) | 0.0165 | 0.1581 | 0.0678 |" in cal
    assert "![Reliability diagram](reliability.png)" in cal
    unknown = card[card.index("## Photos of none of these classes"):card.index("## Heatmaps")]
    assert "| strict | 0.4156 | ≥ 90% | 91.5% |" in unknown and "| normal (default) | 0.4554 | ≥ 95% | 96.4% |" in unknown
    assert "| lenient | 0.5611 | ≥ 99% | 99.8% |" in unknown and "1,986" in unknown and "efficientnet_lite0" in unknown
    assert "90%-confidence bound" in unknown
    assert "AUROC 0.9531" in unknown and "| normal | 94.8% | 3.1% |" in unknown
    assert "non-flower photos accepted (of 27)" in unknown and "flowers_accepted_validation" not in unknown
    assert "| sets |" not in unknown and "| calibration_cross_fitted |" not in unknown
    assert "ECE 0.0816 raw → 0.0264 calibrated (worst half 0.0455)" in unknown
    assert "`gradcam++`, `layercam`, `gradcam`" in card[card.index("## Heatmaps"):]
    limits = card[card.index("## Limits"):]
    assert "forced into" not in card and "none of these" in limits and "other flowers" in limits


def test_model_card_without_trust_or_ranking_leaves_those_out_and_a_kept_temperature_says_why():
    meta = {**trusted_meta(), "calibration": {**calibration(1.0), "note": "only 6 validation photos"}}
    del meta["trust"], meta["cam_ranking"]
    card = model_card(meta, extra_limits=["- Mostly daylight photos."])
    assert "## Photos of none of these classes" in card and "AUROC" not in card and "## Heatmaps" not in card
    assert "kept at 1: only 6 validation photos." in card
    assert card.rstrip().endswith("- Mostly daylight photos.")


def test_a_calibration_block_without_bins_gets_its_table_but_no_diagram_link():
    meta = {**fake_meta(), "calibration": {k: v for k, v in calibration().items() if k != "reliability"}}
    card = model_card(meta)
    assert "| raw (T = 1) | 0.0802 |" in card and "reliability.png" not in card


@pytest.mark.parametrize("bad", ["flowers", "a/b/c", "/name", "owner/", "own er/x", "a/-x", "a/x.", "a/x--y",
                                 "a/x..y", "a/x.git", "ü/x", "a/" + "x" * 97, "", None])
def test_invalid_repo_ids_are_rejected(bad):
    with pytest.raises(HubError, match="owner/name"):
        check_repo_id(bad)


def test_valid_repo_ids_pass():
    for good in ("alice/flowers-lite0", "Org_1/model.v2", "a/b"):
        assert check_repo_id(good) == good


def test_push_then_pull_round_trip(fake_hub, run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_env_token")
    url = push_checkpoint(run_dir, "alice/flowers", private=True)
    assert url == "https://huggingface.co/alice/flowers"
    assert fake_hub.calls[0] == ("create_repo", "alice/flowers", True, True, "hf_env_token")
    # not calibrated: no diagram to show, none uploaded
    assert set(fake_hub.repos["alice/flowers"]) == {"model.safetensors", "meta.json", "README.md"}
    readme = fake_hub.repos["alice/flowers"]["README.md"].decode()
    assert "`tulip`" in readme and "--checkpoint checkpoints/alice--flowers img.jpg" in readme

    dest = pull_checkpoint("alice/flowers", tmp_path / "checkpoints")
    assert dest == tmp_path / "checkpoints" / "alice--flowers"
    original, pulled = load_checkpoint(run_dir), load_checkpoint(dest)
    assert pulled.classes == tuple(CLASSES)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(original.model(x), pulled.model(x))
    assert json.loads((dest / "meta.json").read_text())["classes"] == CLASSES


def test_push_publishes_no_photo_file_names_or_server_folders(fake_hub, run_dir, tmp_path):
    from flowerdemo.models.checkpoints import META, read_meta

    local = tmp_path / "run"
    shutil.copytree(run_dir, local)
    meta = read_meta(local)
    secret = "/srv/visitor-42/photos"
    meta.update({"mistakes": [{"path": f"{secret}/a.jpg"}], "val_predictions": [{"path": f"{secret}/b.jpg"}],
                 "label_issues": {"total": 3, "method": "cleanlab", "issues": [{"path": f"{secret}/c.jpg"}]},
                 "data": {**meta.get("data", {}), "root": secret}})
    (local / META).write_text(json.dumps(meta))
    from safetensors.torch import load_file
    save_file(load_file(str(local / "model.safetensors")), str(local / "model.safetensors"),
              metadata={"flowerdemo": json.dumps(meta)})  # the header carries the meta too
    push_checkpoint(local, "alice/private-photos")
    pushed = fake_hub.repos["alice/private-photos"]["meta.json"].decode()
    assert secret not in pushed and "a.jpg" not in pushed
    weights = fake_hub.repos["alice/private-photos"]["model.safetensors"]
    assert secret.encode() not in weights and b"a.jpg" not in weights
    public = json.loads(pushed)
    assert public["label_issues"] == {"total": 3, "method": "cleanlab"}
    assert public["data"] == {**{k: v for k, v in meta["data"].items() if k != "root"}, "name": "photos"}
    assert public["classes"] == meta["classes"] and read_meta(local)["mistakes"]  # kept on the server
    pulled = pull_checkpoint("alice/private-photos", tmp_path / "checkpoints")
    assert load_checkpoint(pulled).classes == tuple(meta["classes"])


def test_push_of_a_calibrated_checkpoint_uploads_the_reliability_diagram_the_card_shows(fake_hub, tmp_path):
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", len(CLASSES), pretrained=False)
    run = save_checkpoint(tmp_path / "run2", model, {**trusted_meta(), "preprocessing": model.spec.preprocessing.to_dict()})
    push_checkpoint(run, "alice/calibrated", token="t")
    files = fake_hub.repos["alice/calibrated"]
    assert set(files) == {"model.safetensors", "meta.json", "README.md", "reliability.png"}
    assert files["reliability.png"][:8] == b"\x89PNG\r\n\x1a\n" and "](reliability.png)" in files["README.md"].decode()
    dest = pull_checkpoint("alice/calibrated", tmp_path / "checkpoints")
    assert (dest / "reliability.png").read_bytes() == files["reliability.png"]  # the pulled card still shows it


def test_pull_revision_goes_to_its_own_folder(fake_hub, run_dir, tmp_path):
    push_checkpoint(run_dir, "alice/flowers", token="hf_arg")
    assert fake_hub.calls[0][-1] == "hf_arg"
    dest = pull_checkpoint("alice/flowers", tmp_path, revision="v1")
    assert dest.name == "alice--flowers--v1" and ("snapshot_download", "alice/flowers", "v1") == fake_hub.calls[-1][:3]


def test_pull_of_a_foreign_repo_names_what_is_missing_and_leaves_nothing(fake_hub, tmp_path):
    fake_hub.repos["bob/bert"] = {"README.md": b"# a text model", "config.json": b"{}"}
    with pytest.raises(HubError, match="not a flowerdemo checkpoint: it has no model.safetensors or meta.json"):
        pull_checkpoint("bob/bert", tmp_path)
    assert not (tmp_path / "bob--bert").exists()


def test_pull_of_safetensors_without_flowerdemo_metadata_is_refused(fake_hub, tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    fake_hub.repos["bob/vit"] = {"model.safetensors": (tmp_path / "w.safetensors").read_bytes(), "meta.json": b"{}"}
    with pytest.raises(HubError, match="not a usable flowerdemo checkpoint.*no flowerdemo metadata"):
        pull_checkpoint("bob/vit", tmp_path / "dl")


def test_push_refuses_a_folder_that_is_not_a_checkpoint(fake_hub, tmp_path):
    with pytest.raises(HubError, match="cannot push"):
        push_checkpoint(tmp_path, "alice/flowers")
    assert fake_hub.calls == []


# --- the real client against loopback: what users see when the Hub fails --------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub_answering(monkeypatch):
    """Point huggingface_hub at a loopback server that answers every request with (status, X-Error-Code)."""
    answer = {"status": 500, "code": None}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self):
            self.send_response(answer["status"])
            if answer["code"]:
                self.send_header("X-Error-Code", answer["code"])
            body = json.dumps({"error": "nope"}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_HEAD = _reply

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield answer
    server.shutdown()
    server.server_close()


def test_unreachable_hub_says_so(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    with pytest.raises(HubError, match="could not be reached") as pulled:
        pull_checkpoint("alice/flowers", tmp_path)
    assert "internet connection" in str(pulled.value) and not (tmp_path / "alice--flowers").exists()
    with pytest.raises(HubError, match="could not be reached"):
        push_checkpoint(run_dir, "alice/flowers", token="hf_x")


def test_offline_mode_says_how_to_leave_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for call in (lambda: pull_checkpoint("alice/flowers", tmp_path), lambda: push_checkpoint(run_dir, "a/b", "t")):
        with pytest.raises(HubError, match="offline mode is on.*Unset HF_HUB_OFFLINE"):
            call()


@pytest.mark.parametrize("status, code, expected", [
    (404, "RepoNotFound", "no such repo on the Hub, or it is private"),
    (403, "GatedRepo", "gated; accept its conditions"),
    (404, "RevisionNotFound", "revision 'v9' does not exist"),
    (503, None, "answered HTTP 503"),
])
def test_hub_http_errors_on_pull(hub_answering, tmp_path, status, code, expected):
    hub_answering.update(status=status, code=code)
    with pytest.raises(HubError, match=expected):
        pull_checkpoint("alice/flowers", tmp_path, revision="v9")


@pytest.mark.parametrize("status, expected", [(401, "refused the token"), (403, "not allowed")])
def test_hub_auth_errors_on_push(hub_answering, run_dir, status, expected):
    hub_answering.update(status=status, code=None)
    with pytest.raises(HubError, match=expected):
        push_checkpoint(run_dir, "alice/flowers", token="hf_bad")
