"""`python -m flowerdemo`: help texts, train / evaluate / predict, and clean errors (no tracebacks)."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flowerdemo.cli.main import main
from flowerdemo.config import TrainConfig
from flowerdemo.infer.explain import CAM_METHODS
from flowerdemo.models.checkpoints import read_meta
from tests.synth import draw_sample, make_dataset

REPO = Path(__file__).resolve().parents[1]


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


def test_train_help_documents_every_option_with_its_reason(capsys):
    text = _help(capsys, "train")
    assert "--data" in text and "--download-flowers" in text and "--out" in text
    for field in dataclasses.fields(TrainConfig):
        if field.name == "augment":
            continue
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
    for flag in ("--rotation", "--no-rotation", "--no-hflip", "--no-augment", "--crop-scale-min"):
        assert flag in text
    # the help is the config's inline comments, with the defaults
    assert "head LR; the report's 1e-2 is too high for AdamW" in text and "tuning [0.001]" in text
    assert "report: 32 [32]" in text and "report: +-30 degrees" in text


def test_evaluate_predict_and_experiment_help(capsys):
    text = _help(capsys, "evaluate")
    for flag in ("--checkpoint", "--data", "--split", "--batch-size"):
        assert flag in text
    text = _help(capsys, "predict")
    for flag in ("--checkpoint", "--top-k", "--tta", "--cam", "--target", "--alpha", "--out"):
        assert flag in text
    assert all(method in text for method in CAM_METHODS)
    text = _help(capsys, "experiment")
    assert all(suite in text for suite in ("augment", "schedule", "freeze")) and "--seeds" in text


def test_train_writes_a_checkpoint_with_the_options_given(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flowerdemo")
    data = make_dataset(tmp_path / "data", per_class=5, size=40)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "ck"), "--mode", "fast", "--image-size", "32",
                 "--epochs", "2", "--batch-size", "8", "--fast-views", "2", "--workers", "1", "--lr", "0.005",
                 "--no-rotation", "--head", "linear", "--seed", "3"])
    assert code == 0
    runs = [p for p in (tmp_path / "ck").iterdir() if (p / "model.safetensors").is_file()]
    assert len(runs) == 1 and (runs[0] / "meta.json").is_file()
    meta = read_meta(runs[0])
    cfg = TrainConfig.from_dict(meta["config"])
    assert (cfg.mode, cfg.image_size, cfg.epochs, cfg.lr, cfg.head, cfg.seed) == ("fast", 32, 2, 0.005, "linear", 3)
    assert cfg.augment.rotation is False and cfg.augment.hflip is True
    assert meta["head"]["kind"] == "linear" and len(meta["history"]) == 2
    log = caplog.text
    assert "best val acc" in log and "epoch   2/2" in log and str(runs[0]) in log


def test_no_augment_turns_every_augmentation_off(tmp_path):
    from flowerdemo.cli.parser import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--no-augment", "--crop-scale-min", "0.5"])
    aug = config_from_args(args).augment
    assert not any(getattr(aug, f.name) for f in dataclasses.fields(aug) if f.name != "crop_scale_min")
    assert aug.crop_scale_min == 0.5


def test_evaluate_prints_accuracy_per_class_metrics_and_confusion_matrix(trained_run, capsys):
    assert main(["evaluate", "--data", str(trained_run.data), "--checkpoint", str(trained_run.run_dir)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"accuracy \d+\.\d+%", out) and "macro F1" in out and "loss" in out
    assert "precision" in out and "recall" in out and "confusion matrix" in out
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("circle", "square", "triangle") and len(parts) == 4:
            rows[parts[0]] = [int(v) for v in parts[1:]]
    assert set(rows) == {"circle", "square", "triangle"}
    assert sum(map(sum, rows.values())) == 60  # every image of the folder, in the matrix

    assert main(["evaluate", "--data", str(trained_run.data), "--checkpoint", str(trained_run.run_dir),
                 "--split", "val"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"accuracy (\d+\.\d+)%", out).group(1)) / 100
    assert "val: 12 images" in out
    assert accuracy == pytest.approx(read_meta(trained_run.run_dir)["metrics"]["best_val_acc"], abs=0.09)


def test_predict_prints_top_k_and_writes_the_cam_overlay(trained_run, tmp_path, capsys):
    images = []
    for kind, seed in (("circle", 1), ("triangle", 2)):
        path = tmp_path / f"{kind}.png"
        draw_sample(kind, 96, random.Random(seed)).resize((120, 96)).save(path)
        images.append(path)
    out_dir = tmp_path / "overlays"
    code = main(["predict", *map(str, images), "--checkpoint", str(trained_run.run_dir), "--top-k", "2",
                 "--out", str(out_dir), "--target", "square"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    for path in images:
        line = next(text for text in lines if text.startswith(f"{path}:"))
        assert len(re.findall(r"\w+ \d+\.\d%", line)) == 2
        overlay = out_dir / f"{path.stem}.gradcam.png"
        assert overlay.is_file() and Image.open(overlay).size == (120, 96)
        assert (out_dir / f"{path.stem}.gradcam.heatmap.png").is_file()
    assert sum("gradcam for 'square'" in text for text in lines) == 2

    assert main(["predict", str(images[0]), "--checkpoint", str(trained_run.run_dir), "--cam", "none",
                 "--out", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none").exists()


def test_bad_inputs_give_a_message_and_a_nonzero_exit(trained_run, tmp_path, caplog, capsys, monkeypatch):
    run = str(trained_run.run_dir)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    good = tmp_path / "good.png"
    draw_sample("square", 96, random.Random(0)).save(good)

    assert main(["predict", str(broken), str(good), "--checkpoint", run, "--cam", "none"]) == 1
    assert "broken.png" in caplog.text and str(good) in capsys.readouterr().out  # the good one still printed
    assert caplog.text.count(str(broken)) == 1  # named once ("x: x: not a recognised image" before)
    tiny = tmp_path / "tiny.png"
    draw_sample("square", 96, random.Random(0)).resize((40, 30)).save(tiny)
    capsys.readouterr()
    assert main(["predict", str(tiny), str(good), "--checkpoint", run, "--cam", "none", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "40×30 px" in records[0]["warning"] and "warning" not in records[1]  # answered, with a warning

    cases = [
        (["predict", str(good), "--checkpoint", str(tmp_path / "nowhere")], "no checkpoint at"),
        (["predict", str(good), "--checkpoint", run, "--target", "rose"], "unknown class 'rose'"),
        (["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "ck")], "missing"),
        (["train", "--data", str(tmp_path), "--epochs", "0"], "epochs must be >= 1"),
        (["evaluate", "--data", str(tmp_path), "--checkpoint", str(tmp_path / "nowhere")], "no checkpoint at"),
    ]
    for argv, message in cases:
        caplog.clear()
        assert main(argv) == 2, argv
        assert message in caplog.text, (argv, caplog.text)

    monkeypatch.chdir(tmp_path)  # no checkpoints/ here and none given
    caplog.clear()
    assert main(["predict", str(good)]) == 2 and "train one" in caplog.text

    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(good), "--cam", "saliency"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_evaluate_refuses_classes_the_checkpoint_does_not_know(trained_run, tmp_path, caplog):
    data = make_dataset(tmp_path / "data", per_class=2, size=40, classes=("circle", "square"))
    (data / "hexagon").mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (1, 2, 3 + i)).save(data / "hexagon" / f"h{i}.png")
    assert main(["evaluate", "--data", str(data), "--checkpoint", str(trained_run.run_dir)]) == 2
    assert "hexagon" in caplog.text and "circle, square, triangle" in caplog.text


def test_module_entry_point_exits_cleanly_without_a_traceback(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    proc = subprocess.run([sys.executable, "-m", "flowerdemo", "predict", str(image), "--checkpoint",
                           str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "no checkpoint at" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_check_subcommand_reports_a_photo_filed_under_two_classes(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", per_class=6, size=48, classes=("circle", "square"))
    assert main(["check", "--data", str(data), "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    copy = data / "square" / "copy_of_circle.png"
    copy.write_bytes((data / "circle" / "circle_000.png").read_bytes())
    assert main(["check", "--data", str(data), "--cache-dir", str(tmp_path / "cache")]) == 1
    out = capsys.readouterr().out
    assert "copy_of_circle.png" in out and "circle_000.png" in out


def test_export_subcommand_is_wired_and_refuses_int8_torchscript_before_loading(tmp_path, caplog, capsys):
    assert "--format" in _help(capsys, "export") and "--int8" in _help(capsys, "export")
    missing = tmp_path / "no-such-run"  # never read: the option check comes first
    assert main(["export", "--checkpoint", str(missing), "--format", "torchscript", "--int8"]) == 2
    assert "int8" in caplog.text and "onnx" in caplog.text.lower()


def test_train_prints_the_photos_that_may_be_labelled_wrong():
    from flowerdemo.cli.commands import _label_issues_text
    from flowerdemo.train.events import Finished

    issue = {"path": "rose/x.jpg", "given": "rose", "suggested": "tulip", "confidence": 0.83, "quality": 0.1,
             "split": "train"}
    ev = Finished(None, 0.9, 3, 3, 1.0, False, {"label_issues": {"total": 7, "by_split": {"train": 6, "val": 1}}},
                  label_issues=(issue,))
    text = _label_issues_text(ev)
    assert "7 (6 training / 1 validation)" in text and "rose/x.jpg filed as rose, looks like tulip (83%)" in text
