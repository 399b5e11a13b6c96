"""Gradient checkpointing (activation recomputation, as LLM scripts and the Trainer's
``gradient_checkpointing_enable`` use it): the blocks run again inside the backward pass. optwatch's numbers
and the origin of a non-finite value are what they are without it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from conftest import new_probe, records_of, steps_of

BATCH = 16


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.armed = False

    def forward(self, x):
        out = torch.tanh(self.linear(x))
        return out * math.inf if self.armed else out


class Checkpointed(nn.Module):
    """Three blocks, each run through ``torch.utils.checkpoint`` (reentrant or not), then a head."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(8, 1)
        self.reentrant = reentrant

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=self.reentrant)
        return self.head(x)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_a_checkpointed_model_has_its_steps_samples_and_the_origin_of_an_inf_right(reentrant):
    """Every check at every step. Each step's samples are the batch's (a reentrant checkpoint's backward calls
    ``torch.autograd.backward`` again, once per block: not a loss, nor the start of a step), and an inf that
    the second block emits at step 6 is named there, as without checkpointing. A reentrant checkpoint runs
    its block's forward without gradients and again with them in the backward pass, after the head: the
    check used to see the blocks there only, and named 'head'."""
    probe = new_probe("checkpointing", budget=0.0, forward_check="always").start()
    model = Checkpointed(reentrant)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.utils.data.TensorDataset(torch.randn(11 * BATCH, 4), torch.randn(11 * BATCH, 1))
    batches = iter(torch.utils.data.DataLoader(data, batch_size=BATCH))
    next(batches)  # a batch looked at before the training (a shape check, a sample printed)
    losses = []
    for step, (x, y) in enumerate(batches):
        model.blocks[1].armed = step == 6
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    records = records_of(probe)
    steps = steps_of(records)
    assert [s["step"] for s in steps] == list(range(10))
    assert [s["samples"] for s in steps] == [BATCH] * 10
    assert [s["loss"] for s in steps[:6]] == losses[:6]  # bit-exact, as the script saw them
    [alert] = [a for a in records if a["kind"] == "alert" and a["type"] == "nonfinite"]
    assert alert["step"] == 6 and alert["module"] == "blocks.1", alert["message"]
