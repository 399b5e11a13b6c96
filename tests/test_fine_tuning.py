"""Fine-tuning: a frozen backbone, or LoRA adapters on frozen weights, the optimizer over the trained part only
(the Trainer with peft, a hand-written loop). The gradient norm is the clip's, before clipping, and each
parameter keeps the name the script gives it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import new_probe, records_of, steps_of


class LoRALinear(nn.Module):
    """A frozen Linear plus a trained low-rank update, B zero at the start (as peft's)."""

    def __init__(self, size: int, rank: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(size, size).requires_grad_(False)
        self.lora_A = nn.Linear(size, rank, bias=False)
        self.lora_B = nn.Linear(rank, size, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


def fine_tuned(how: str) -> tuple[nn.Module, list[str]]:
    """The model and the names of the parameters the fine-tuning trains."""
    torch.manual_seed(0)
    if how == "frozen backbone":
        model = nn.Sequential()
        model.add_module("backbone", nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh()))
        model.add_module("head", nn.Sequential(nn.Linear(16, 1)))
        model.backbone.requires_grad_(False)
    else:
        model = nn.Sequential()
        model.add_module("embed", nn.Linear(8, 16).requires_grad_(False))
        model.add_module("blocks", nn.Sequential(LoRALinear(16), nn.Tanh(), LoRALinear(16), nn.Tanh()))
        model.add_module("head", nn.Linear(16, 1).requires_grad_(False))
    return model, [name for name, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("how", ["frozen backbone", "LoRA"])
def test_a_fine_tuned_model_has_its_norms_before_the_clip_and_its_own_parameter_names(how):
    """The script clips model.parameters() from step 5 (its first ones frozen, in no optimizer): each step's
    norm is what the clip returned, never the clipped one (it was, from the first clip on, when the first
    steps had not clipped), and the layer records name the parameters as model.named_parameters() does
    ('head.0.weight', 'blocks.0.lora_A.weight'; they were named after the largest trained part:
    '0.weight', '(unnamed).3')."""
    probe = new_probe("fine-tuning", budget=0.0).start()
    model, trained = fine_tuned(how)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    norms = []
    for step in range(20):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if step >= 5:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.001)))
        optimizer.step()
    records = records_of(probe)
    steps = steps_of(records)
    assert [s["grad_norm"] for s in steps[5:]] == pytest.approx(norms, rel=1e-6)
    assert min(norms) > 0.001 * 5  # clipped norms would read 0.001
    layers = [r for r in records if r["kind"] == "layers"]
    assert layers and all(r["names"] == trained for r in layers)
