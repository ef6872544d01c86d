"""Training configuration: frozen dataclasses, overridden with `dataclasses.replace`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("warmup_cosine", "linear", "step", "constant")
MODES = ("auto", "full", "fast")
FREEZE = ("none", "backbone", "stages")
HEADS = ("mlp", "linear")


class ConfigError(ValueError):
    """A configuration value is outside what is accepted."""


@dataclass(frozen=True)
class AugmentConfig:
    """The report's training augmentations, each switchable (Table 2 turns them on one by one)."""

    random_resized_crop: bool = True  # report: RandomResizedCrop(224); off = centre crop
    crop_scale_min: float = 0.25  # torchvision's 0.08 often crops the flower away on 227 px photos
    hflip: bool = True  # report: p = 0.5
    color_jitter: bool = True  # report: ColorJitter(0.2, 0.2, 0.2, 0.1)
    rotation: bool = True  # report: +-30 degrees
    translate: bool = True  # report: +-10 % of the image size
    random_erasing: bool = True  # report: "erasing"; torchvision defaults p=0.5, area 2-33 %

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale_min <= 1:
            raise ConfigError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Evaluation-style input only (the report's baseline: centre crop + normalisation)."""
        return cls(False, 0.25, False, False, False, False, False)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored verbatim in every checkpoint."""

    model: str = "efficientnet_lite0"  # bundled ImageNet weights: works offline
    pretrained: bool = True  # False only for smoke tests and throughput benchmarks
    head: str = "mlp"  # report eq. (1): Linear(in,256)-ReLU-Dropout(0.2)-Linear; or "linear"
    head_hidden: int = 256  # report eq. (1)
    head_dropout: float = 0.2  # report eq. (1)
    mode: str = "auto"  # auto: full fine-tune on a GPU, fast mode (cached activations) on a CPU
    freeze: str = "none"  # none | backbone (head only) | stages (the first `frozen_stages`)
    frozen_stages: int = 2  # early stages hold generic edges/colours; used when freeze="stages"
    image_size: int = 0  # 0 = the backbone's own input size (224); smaller trains faster
    epochs: int = 20  # full fine-tuning converges in ~10-20 epochs here; the report ran 50
    batch_size: int = 32  # report: 32
    lr: float = 1e-3  # head LR; the report's 1e-2 is too high for AdamW fine-tuning
    backbone_lr_scale: float = 0.1  # pretrained layers move 10x slower than the new head
    optimizer: str = "adamw"  # report: AdamW
    weight_decay: float = 0.01  # report: 0.01
    momentum: float = 0.9  # SGD only
    schedule: str = "warmup_cosine"  # report: linear warm-up then cosine annealing
    warmup_epochs: float = 1.0  # a short warm-up is enough with a pretrained backbone
    warmup_start_factor: float = 0.1  # report: warm-up from 0.001 to 0.01
    step_epochs: int = 10  # step schedule: decay every this many epochs
    step_gamma: float = 0.1  # step schedule: decay factor
    grad_clip: float = 1.0  # report: gradient clipping; 0 disables
    label_smoothing: float = 0.1  # softens near-duplicate / mislabelled photos
    val_fraction: float = 0.2  # report: 80/20 split
    seed: int = 0  # split, init, augmentation order
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    fast_views: int = 3  # fast mode: cached views per image (1 clean, the rest augmented)
    # each view costs a forward pass of the training set (~25 s for 2k images on 2 cores); with the last stage
    # fine-tuned, 3 views beat 2 and 4 no longer fit the 3-minute budget (docs/benchmarks.md §1)
    fast_tune_last_stage: bool = True  # fast mode: also fine-tune the backbone's last stage from cached activations (not with --freeze backbone)
    fast_tail_lr_scale: float = 1.0  # fast mode: last-stage LR relative to the head's (measured best: 1.0 > 0.3 > 0.1)
    cache_features: bool = True  # fast mode: reuse features across runs on the same data + backbone
    amp: bool = True  # CUDA: bf16 autocast where supported, else fp16 with a scaler; CPU fast mode: bf16 on AMX/AVX512-BF16
    channels_last: bool = True  # faster convolutions: tensor cores on CUDA; oneDNN NHWC kernels on CPU
    compile: bool = False  # torch.compile; off where not allowed (e.g. ZeroGPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 0  # image decode threads; 0 = one per CPU core

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, MODES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("freeze", self.freeze, FREEZE)
        _check_choice("head", self.head, HEADS)
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.image_size and not 32 <= self.image_size <= 1024:
            raise ConfigError(f"image_size must be 0 (backbone default) or 32..1024, got {self.image_size}")
        if self.fast_views < 1:
            raise ConfigError(f"fast_views must be >= 1, got {self.fast_views}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        for name in ("head_hidden", "step_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("frozen_stages", "workers", "weight_decay", "grad_clip", "backbone_lr_scale", "fast_tail_lr_scale"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Rebuild from `to_dict()` output; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if isinstance(kwargs.get("augment"), dict):
            aug_known = {f.name for f in fields(AugmentConfig)}
            kwargs["augment"] = AugmentConfig(**{k: v for k, v in kwargs["augment"].items() if k in aug_known})
        return cls(**kwargs)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not accepted; choose one of: {', '.join(choices)}")
