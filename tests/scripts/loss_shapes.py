"""A loss of one number in a shape other than ``()``: ``.mean(dim=0)`` of a (B, 1) error is (1,), a (B, 1, 1)
one (1, 1); ``backward()`` takes them as scalars. ``--micro 2``: two micro-batches a step. Prints each step's
loss as the optimizer's step applies it: ``TRUTH {"step": S, "loss": L}``."""

import argparse
import json

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--shape", default="1", help="1 or 1,1")
parser.add_argument("--micro", type=int, default=1)
args = parser.parse_args()
shape = tuple(int(n) for n in args.shape.split(","))

torch.manual_seed(0)
model = torch.nn.Linear(10, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
inputs, targets = torch.randn(64, 10), torch.randn(64, 1)
for step in range(12):
    optimizer.zero_grad()
    total = 0.0
    for part in range(args.micro):
        error = (model(inputs[part::2]) - targets[part::2]) ** 2
        loss = error.mean(dim=0).reshape(shape)
        assert loss.shape == shape
        loss.backward()
        total += loss.item()
    optimizer.step()
    print("TRUTH " + json.dumps({"step": step, "loss": total}), flush=True)
