"""transformers' Adafactor as the Hugging Face examples set it up for T5: ``relative_step=True`` (the optimizer
computes its own rate from the step count and each parameter's scale, ``lr=None``), with the
``AdafactorSchedule`` that writes a rate into the param group for the logs. No optwatch import.

    TRUTH {"step": S, "loss": ...}
"""

import json

import torch
from torch import nn
from transformers.optimization import Adafactor, AdafactorSchedule

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = Adafactor(model.parameters(), scale_parameter=True, relative_step=True, warmup_init=True, lr=None)
scheduler = AdafactorSchedule(optimizer)
inputs, targets = torch.randn(64, 16), torch.randn(64, 1)
for step in range(12):
    loss = nn.functional.mse_loss(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item()}), flush=True)
