"""Training configuration: frozen dataclasses, overridden with `dataclasses.replace`. Each field's
metadata["help"] says why its default is what it is; the CLI's --help shows it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("warmup_cosine", "linear", "step", "constant")
MODES = ("auto", "full", "fast")
FREEZE = ("none", "backbone", "stages")
HEADS = ("mlp", "linear")
KEEPS = ("best", "last")


# The backbone a run, the app and the CLI start from; the model registry imports it from here.
DEFAULT_MODEL = "efficientnet_lite0"


class ConfigError(ValueError):
    """A configuration value is outside what is accepted."""


def _opt(default: Any, why: str) -> Any:
    """A config field whose `why` (why the default is what it is) is also its --help text."""
    return field(default=default, metadata={"help": why})


@dataclass(frozen=True)
class AugmentConfig:
    """The report's training augmentations, each switchable (Table 2 turns them on one by one)."""

    random_resized_crop: bool = _opt(True, "report: RandomResizedCrop(224); off = centre crop")
    crop_scale_min: float = _opt(0.25, "torchvision's 0.08 often crops the flower away on 227 px photos")
    hflip: bool = _opt(True, "report: p = 0.5")
    color_jitter: bool = _opt(True, "report: ColorJitter(0.2, 0.2, 0.2, 0.1)")
    rotation: bool = _opt(True, "report: +-30 degrees")
    translate: bool = _opt(True, "report: +-10 % of the image size")
    random_erasing: bool = _opt(True, 'report: "erasing"; torchvision defaults p=0.5, area 2-33 %')

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale_min <= 1:
            raise ConfigError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Evaluation-style input only (the report's baseline: centre crop + normalisation)."""
        return cls(False, 0.25, False, False, False, False, False)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored verbatim in every checkpoint."""

    model: str = _opt(DEFAULT_MODEL, "bundled ImageNet weights: works offline")
    pretrained: bool = _opt(True, "False only for smoke tests and throughput benchmarks")
    head: str = _opt("mlp", 'report eq. (1): Linear(in,256)-ReLU-Dropout(0.2)-Linear; or "linear"')
    head_hidden: int = _opt(256, "report eq. (1)")
    head_dropout: float = _opt(0.2, "report eq. (1)")
    mode: str = _opt("auto", "auto: full fine-tune on a GPU, fast mode (cached activations) on a CPU")
    freeze: str = _opt("none", "none | backbone (head only) | stages (the first `frozen_stages`)")
    frozen_stages: int = _opt(2, 'early stages hold generic edges/colours; used when freeze="stages"')
    image_size: int = _opt(0, "0 = the backbone's own input size (224); smaller trains faster")
    epochs: int = _opt(20, "the report ran 50; 20 is the budget the accuracy benchmarks measure (docs/benchmarks.md)")
    batch_size: int = _opt(32, "report: 32")
    lr: float = _opt(1e-3, "head LR; the report's 1e-2 is too high for AdamW fine-tuning")
    backbone_lr_scale: float = _opt(0.1, "pretrained layers move 10x slower than the new head")
    optimizer: str = _opt("adamw", "report: AdamW")
    weight_decay: float = _opt(0.01, "report: 0.01")
    momentum: float = _opt(0.9, "SGD only")
    schedule: str = _opt("warmup_cosine", "report: linear warm-up then cosine annealing")
    warmup_epochs: float = _opt(1.0, "a short warm-up is enough with a pretrained backbone")
    warmup_start_factor: float = _opt(0.1, "report: warm-up from 0.001 to 0.01")
    step_epochs: int = _opt(10, "step schedule: decay every this many epochs")
    step_gamma: float = _opt(0.1, "step schedule: decay factor")
    grad_clip: float = _opt(1.0, "report: gradient clipping; 0 disables")
    label_smoothing: float = _opt(0.1, "softens near-duplicate / mislabelled photos")
    val_fraction: float = _opt(0.2, "report: 80/20 split")
    keep: str = _opt("best", "the weights a run keeps: best = the epoch with the highest validation accuracy (chosen "
                             "on the validation photos, so its figure reads a little high); last = the last epoch's "
                             "(nothing chosen on them: an honest figure, and the temperature is fitted on photos "
                             "that chose nothing)")
    seed: int = _opt(0, "split, init, augmentation order")
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "see AugmentConfig"})
    fast_views: int = _opt(3, "fast mode: cached views per image (1 clean, the rest augmented); each view costs "
                              "a forward pass of the training set, and with the last stage fine-tuned 3 views beat "
                              "2 and 4 did not beat 3 (cross-validated, see docs/benchmarks.md §12)")
    fast_tune_last_stage: bool = _opt(True, "fast mode: also fine-tune the backbone's last stage from cached "
                                            "activations (not with --freeze backbone)")
    fast_tail_lr_scale: float = _opt(1.0, "fast mode: last-stage LR relative to the head's; the best of the scales "
                                          "measured (see docs/benchmarks.md)")
    cache_features: bool = _opt(True, "fast mode: reuse features across runs on the same data + backbone")
    amp: bool = _opt(True, "CUDA: bf16 autocast where supported, else fp16 with a scaler; CPU fast mode: bf16 on "
                           "AMX/AVX512-BF16")
    channels_last: bool = _opt(True, "faster convolutions: tensor cores on CUDA; oneDNN NHWC kernels on CPU")
    compile: bool = _opt(False, "torch.compile; off where not allowed (e.g. ZeroGPU)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    workers: int = _opt(0, "image decode threads; 0 = one per CPU core")

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, MODES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("freeze", self.freeze, FREEZE)
        _check_choice("head", self.head, HEADS)
        _check_choice("keep", self.keep, KEEPS)
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
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
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
