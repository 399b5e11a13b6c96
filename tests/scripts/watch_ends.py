"""A few steps of plain torch with ``optwatch.watch``, started with plain ``python``, then an end of each kind
a script has (``--end``): its last statement (``normal``), ``sys.exit(3)`` (``exit``), an uncaught
``RuntimeError`` (``raise``), an uncaught exception in a thread of its own, which python's exit leaves at 0
(``thread``). Prints ``STEPS N`` once its steps are done.
"""

import argparse
import sys
import threading

import torch
from torch import nn

import optwatch

parser = argparse.ArgumentParser()
parser.add_argument("--end", choices=("normal", "exit", "raise", "thread"), default="normal")
parser.add_argument("--steps", type=int, default=5)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
optwatch.watch(model, optimizer, batch_size=8)
for _ in range(args.steps):
    optimizer.zero_grad()
    nn.functional.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1)).backward()
    optimizer.step()
print(f"STEPS {args.steps}", flush=True)


def fail() -> None:
    raise ValueError("a helper thread failed")


if args.end == "exit":
    sys.exit(3)
elif args.end == "raise":
    raise RuntimeError("the batch was bad")
elif args.end == "thread":
    helper = threading.Thread(target=fail)
    helper.start()
    helper.join()
