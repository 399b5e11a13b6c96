"""A whole train step compiled (``torch.compile(train_step)``): forward, loss, ``backward()``, the clip,
``optimizer.step()`` and ``zero_grad()`` inside the compiled function, as compiled training loops do. The
aot_eager backend: what torch.compile traces, without a C++ compiler. No optwatch import.

    TRUTH {"step": S, "loss": the step's loss}
"""

import argparse
import json

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_  # (by name, before anything is compiled)

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
inputs, labels = torch.randn(1024, 32), torch.randint(0, 10, (1024,))


@torch.compile(backend="aot_eager")
def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return loss


for step in range(args.steps):
    batch = slice(64 * (step % 16), 64 * (step % 16 + 1))
    loss = train_step(inputs[batch], labels[batch])
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item()}), flush=True)
