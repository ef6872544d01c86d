"""Which autocast each device gets: CPU bf16 only when asked for and natively supported."""

from __future__ import annotations

import pytest
import torch

from flowerdemo import device as precision
from flowerdemo.device import autocast_dtype, autocast_for


def _linear_dtype(autocast) -> torch.dtype:
    layer = torch.nn.Linear(4, 4)
    with autocast():
        return layer(torch.randn(2, 4)).dtype


@pytest.mark.parametrize("native", [False, True])
def test_cpu_gets_bf16_only_when_asked_and_native(native, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: native)
    cpu = torch.device("cpu")
    asked, _ = autocast_for(cpu, True, cpu_bf16=True)
    assert _linear_dtype(asked) == (torch.bfloat16 if native else torch.float32)
    assert autocast_dtype(asked) == ("bf16" if native else "fp32")
    for autocast in (autocast_for(cpu, True)[0], autocast_for(cpu, False, cpu_bf16=True)[0]):  # not asked / amp off
        assert _linear_dtype(autocast) == torch.float32 and autocast_dtype(autocast) == "fp32"
    assert not autocast_for(cpu, True, cpu_bf16=True)[1].is_enabled()  # no loss scaler on the CPU


def test_native_bf16_query_is_a_bool_and_survives_a_torch_without_it(monkeypatch):
    assert isinstance(precision.cpu_has_fast_bf16(), bool)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: (_ for _ in ()).throw(AttributeError("old torch")))
    assert precision.cpu_has_fast_bf16() is False
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert precision.cpu_has_fast_bf16() is False
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert precision.cpu_has_fast_bf16() is True
