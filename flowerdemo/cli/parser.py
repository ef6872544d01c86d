"""The argument parser of the CLI: sub-commands, and one flag per TrainConfig field."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from flowerdemo import config as config_module
from flowerdemo.cli.check import add_parser as add_check_parser
from flowerdemo.cli.export import add_parser as add_export_parser
from flowerdemo.config import AugmentConfig, TrainConfig
from flowerdemo.settings import add_arguments


def _help(f: dataclasses.Field) -> str:
    """A config field's help text: its metadata, the one place that says why its default is what it is."""
    return f.metadata.get("help", "").replace("%", "%%")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    choices = {"mode": config_module.MODES, "optimizer": config_module.OPTIMIZERS, "schedule": config_module.SCHEDULES,
               "freeze": config_module.FREEZE, "head": config_module.HEADS, "keep": config_module.KEEPS}
    g = p.add_argument_group("training options (defaults in brackets)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "augment":
            continue
        default = f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=_help(f))
        else:
            g.add_argument(flag, type=type(default), default=default, choices=choices.get(f.name),
                           help=f"{_help(f)} [{default}]")
    a = p.add_argument_group("augmentations (each switchable, e.g. --no-rotation)")
    for f in dataclasses.fields(AugmentConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            a.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=_help(f))
        else:
            a.add_argument(flag, type=type(f.default), default=f.default, help=f"{_help(f)} [{f.default}]")
    a.add_argument("--no-augment", action="store_true", help="turn every augmentation off (centre crop only)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    aug = AugmentConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AugmentConfig)})
    if args.no_augment:
        aug = dataclasses.replace(AugmentConfig.none(), crop_scale_min=aug.crop_scale_min)
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "augment"}
    return TrainConfig(**kwargs, augment=aug)


def build_parser() -> argparse.ArgumentParser:
    from flowerdemo.infer.explain import CAM_METHODS
    from flowerdemo.models.registry import MODELS

    parser = argparse.ArgumentParser(
        prog="flowerdemo", description="Fine-tune an ImageNet CNN on a folder of labelled photos, evaluate it, "
                                       "predict and explain with Grad-CAM. Also runs as `python -m flowerdemo`.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune a model on a folder of class sub-folders",
                       description="Fine-tune an ImageNet CNN on an ImageFolder dataset; writes a checkpoint run dir. "
                                   f"Models: {', '.join(MODELS)}.")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="folder with one sub-folder per class (or train/ and val/), or a .zip of one")
    src.add_argument("--download-flowers", action="store_true",
                     help="download the public 5-class TensorFlow flowers archive (needs a network) and train on it")
    # --out is the app's checkpoint dir, --cache-dir its cache root (for --download-flowers): read with
    # Settings.from_args, so FLOWERDEMO_CHECKPOINT_DIR / FLOWERDEMO_CACHE apply here too
    add_arguments(t, ("checkpoint_dir", "cache_dir"), flags={"checkpoint_dir": "--out"})
    _add_config_options(t)

    e = sub.add_parser("evaluate", help="accuracy (with its 95%% interval), per-class metrics, confusion matrix and "
                                        "calibration of a checkpoint on a folder")
    e.add_argument("--checkpoint", type=Path, help="run directory or .safetensors file "
                    "[the newest under FLOWERDEMO_CHECKPOINT_DIR, else checkpoints/]")
    e.add_argument("--data", type=Path, required=True, help="ImageFolder dataset (or .zip) with the checkpoint's classes")
    e.add_argument("--split", choices=("all", "val"), default="all",
                   help="all images, or only the validation part of the split the checkpoint was trained with [all]")
    e.add_argument("--batch-size", type=int, default=64, help="images per forward pass [64]")
    e.add_argument("--json", action="store_true",
                   help="print one JSON object (accuracy with count and 95%% interval, per-class metrics, confusion "
                        "matrix, calibration before/after the stored temperature) instead of the text report")

    x = sub.add_parser("experiment", help="compare configurations over several seeds (report's Tables 2 and 3)",
                       description="Run each configuration of a suite with several seeds and write a markdown report "
                                   "(mean ± std of best/final val accuracy and final train loss) with curve plots.")
    x.add_argument("suite", choices=("augment", "schedule", "freeze"),
                   help="augment: Table 2 ladder; schedule: warm-up+cosine vs LinearLR vs constant; freeze: none/stages/head")
    x.add_argument("--data", type=Path, required=True, help="ImageFolder dataset (or .zip)")
    x.add_argument("--seeds", type=int, default=3, help="seeds per configuration (>= 2) [3]")
    x.add_argument("--out", type=Path, default=Path("experiments"), help="report folder [experiments/<suite>]")
    _add_config_options(x)

    pr = sub.add_parser("predict", help="top-k classes and a Grad-CAM overlay for image files")
    pr.add_argument("images", nargs="+", type=Path, help="image files (jpg, png, webp, bmp, gif)")
    pr.add_argument("--checkpoint", type=Path, help="run directory or .safetensors file "
                    "[the newest under FLOWERDEMO_CHECKPOINT_DIR, else checkpoints/]")
    pr.add_argument("--top-k", type=int, default=5, help="how many classes to print [5]")
    pr.add_argument("--tta", action="store_true", help="average with the mirrored image (test-time augmentation)")
    pr.add_argument("--cam", default="gradcam", choices=[*CAM_METHODS, "none"], help="CAM method, or none [gradcam]")
    pr.add_argument("--target", help="class to explain [the predicted class]")
    pr.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in the overlay [0.5]")
    pr.add_argument("--out", type=Path, help="folder for the overlays [next to each input image]")
    pr.add_argument("--strictness", default="normal", choices=["strict", "normal", "lenient", "off"],
                    help="how readily a photo is called none of the model's classes: the share of real photos of "
                         "its classes accepted, strict 90%%, normal 95%%, lenient 99%%, or off [normal]")
    pr.add_argument("--json", action="store_true",
                    help="print one JSON object per image (file, probabilities, label, known, score, threshold)")
    add_check_parser(sub)
    add_export_parser(sub)
    return parser
