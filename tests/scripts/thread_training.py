"""Trains in a thread of its own while the main thread waits for it, as a script that keeps its main thread
for a UI or a server does. No optwatch import. Prints ``step N`` per step and ``main: done`` at the end."""

import argparse
import threading

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--exit-zero", action="store_true", help="end with sys.exit(0), as sys.exit(main()) does")
args = parser.parse_args()


def train() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inputs, targets = torch.randn(64, 8), torch.randn(64, 1)
    for step in range(args.steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
        print(f"step {step}", flush=True)


trainer = threading.Thread(target=train, name="trainer")
trainer.start()
trainer.join()
print("main: done", flush=True)
if args.exit_zero:
    import sys

    sys.exit(0)
