"""A tiny model's many short steps, then a long evaluation with no DataLoader (the model called on tensors
the script holds), then the end. No optwatch import. Prints EVALUATING when the evaluation begins."""

import argparse
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=400)
parser.add_argument("--evaluate-s", type=float, default=6.0)
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
inputs, targets = torch.randn(64, 16), torch.randn(64, 1)
for _ in range(args.steps):
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    optimizer.step()
print("EVALUATING", flush=True)
ended = time.monotonic() + args.evaluate_s
with torch.no_grad():
    while time.monotonic() < ended:
        model(torch.randn(256, 16))
        time.sleep(0.01)
print("DONE", flush=True)
