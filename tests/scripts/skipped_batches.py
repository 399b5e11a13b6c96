"""A loop that skips a bad batch: the model raises on it, the loop catches that and takes the next batch, as
loops that skip corrupt samples or out-of-memory batches do. Batches from a DataLoader whose items take a
while to make. No optwatch import.

    TRUTH {"step": S, "forward_s": the step's forward (the one that succeeded), "after_skip": bool}
"""

import argparse
import json
import time

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--bad-every", type=int, default=5, help="the model raises on every Nth call")
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)


class SlowItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64 * 2 * args.steps

    def __getitem__(self, index: int):
        tally = 0
        for i in range(2000):  # making the item (decoding, augmenting)
            tally += i % 7
        return torch.full((64,), float(index % 13)), torch.tensor(float(index % 3))


class BadBatch(Exception):
    pass


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.body(x)
        if self.calls % args.bad_every == 0:
            raise BadBatch(f"bad batch at call {self.calls}")
        return out


model = Model()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
batches = iter(torch.utils.data.DataLoader(SlowItems(), batch_size=64))
step, skipped = 0, False
while step < args.steps:
    x, y = next(batches)
    began = time.perf_counter()
    try:
        out = model(x)
    except BadBatch:
        skipped = True
        continue
    forward_s = time.perf_counter() - began
    loss = nn.functional.mse_loss(out.squeeze(1), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print("TRUTH " + json.dumps({"step": step, "forward_s": forward_s, "after_skip": skipped}), flush=True)
    step, skipped = step + 1, False
