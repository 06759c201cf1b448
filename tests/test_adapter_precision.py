"""Under bf16 autocast a LoRA layer's small update reaches its output whole once the update is added in
float32 (posttrain.adapter_precision), and is mostly rounded away without it; training stages add it
under bf16 and leave float32 alone."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from conftest import sft_stage_context
from posttrain.adapter_precision import add_adapter_updates_in_float32
from posttrain.training_settings import bf16_supported

needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")


class OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(256, 256)

    def forward(self, x):
        return self.proj(x)


def adapted_layer(update_scale: float):
    """A LoRA-adapted Linear whose output is ~1 and whose adapter update is ~update_scale of it (early training)."""
    torch.manual_seed(0)
    net = get_peft_model(OneLayer(), LoraConfig(r=4, lora_alpha=4, target_modules=["proj"]))
    layer = net.base_model.model.proj
    nn.init.normal_(layer.lora_B["default"].weight, std=update_scale)
    return net, layer


def update_seen_by_the_forward(net, layer, x) -> float:
    """Relative error of (output - frozen output) under bf16 autocast against the adapter's float32 update."""
    with torch.no_grad():
        true_update = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            frozen = layer.get_base_layer()(x).float()
            output = net(x).float()
    return float((output - frozen - true_update).norm() / true_update.norm())


@needs_bf16
def test_a_small_update_is_rounded_away_in_bf16_and_kept_in_float32():
    x = torch.randn(64, 256)
    net, layer = adapted_layer(update_scale=1e-3)
    assert update_seen_by_the_forward(net, layer, x) > 0.2  # what peft's bf16 sum sees: the mechanism is real
    assert add_adapter_updates_in_float32(net) == 1
    assert add_adapter_updates_in_float32(net) == 1  # idempotent: one hook per layer
    assert len(layer.get_base_layer()._forward_hooks) == 1
    assert update_seen_by_the_forward(net, layer, x) < 0.02  # the update's own bf16 matmul error, nothing more


def test_in_float32_the_hook_changes_nothing():
    x = torch.randn(8, 256)
    net, _ = adapted_layer(update_scale=1e-3)
    before = net(x)
    add_adapter_updates_in_float32(net)
    assert torch.equal(net(x), before)


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_a_training_stage_adds_updates_in_float32_under_bf16_only(tmp_path, precision):
    from posttrain.stages.sft import SFTStage
    from posttrain.training import train

    ctx = sft_stage_context(tmp_path, precision)
    trainer = SFTStage().build_trainer(ctx)
    history = train(trainer, ctx)
    adapted = [m for m in trainer.model.modules() if hasattr(m, "lora_A") and m.lora_A]
    assert adapted and history
    hooked = [bool(m.get_base_layer()._forward_hooks) for m in adapted]
    assert hooked == [precision == "bf16"] * len(adapted)
