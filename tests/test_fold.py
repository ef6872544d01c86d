"""BatchNorm folding of frozen encoders (fast-mode extraction): same outputs, fewer layers, and a
fold that would change the outputs is refused."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from flowerdemo.models.fold import fold_batchnorm, folded_or_original, verify_fold
from flowerdemo.models.registry import build_model


def _randomise_bn(model: nn.Module) -> None:
    """Random-init models have identity BN statistics, which would fold trivially."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "efficientnet_b0"])
def test_folded_trunk_computes_the_same_without_batchnorm(name):
    torch.manual_seed(0)
    model = build_model(name, 3, pretrained=False).eval()
    _randomise_bn(model)
    trunk, _ = model.split()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    folded, count = fold_batchnorm(trunk)
    assert n_bn > 0 and count == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(folded(x), trunk(x), rtol=1e-4, atol=1e-4)
    # a copy: the model itself still has its BatchNorm layers and trainable parameters
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trunk.modules()) == n_bn
    assert all(p.requires_grad for p in trunk.parameters()) and not any(p.requires_grad for p in folded.parameters())


def test_verification_restores_the_training_mode_and_catches_a_wrong_fold():
    model = build_model("resnet18", 3, pretrained=False).train()
    _randomise_bn(model)
    trunk, _ = model.split()
    trunk[4].eval()  # a submodule in another mode than its parent keeps it
    folded, _ = fold_batchnorm(trunk)
    x = torch.randn(2, 3, 64, 64)
    stats = trunk[1].running_mean.clone()
    assert verify_fold(trunk, folded, x)
    assert trunk.training and trunk[1].training and not trunk[4].training
    assert torch.equal(trunk[1].running_mean, stats)  # compared in eval mode, stats untouched
    with torch.no_grad():
        folded[0].bias.add_(0.5)  # a fold that went wrong
    assert not verify_fold(trunk, folded, x)


def test_a_fold_that_changes_outputs_is_not_used(monkeypatch, caplog):
    from flowerdemo.models import fold

    model = build_model("resnet18", 3, pretrained=False).eval()
    _randomise_bn(model)
    trunk, _ = model.split()
    x = torch.randn(2, 3, 64, 64)
    assert folded_or_original(trunk, x) is not trunk  # the normal case: a folded copy
    monkeypatch.setattr(fold, "verify_fold", lambda *a, **k: False)
    with caplog.at_level(logging.WARNING, logger="flowerdemo.models.fold"):
        assert folded_or_original(trunk, x) is trunk
    assert "unfolded" in caplog.text
