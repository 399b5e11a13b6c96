"""A training whose second Ctrl-C saves an emergency checkpoint (the first only asks it to finish the epoch):
writes "second" to ``--saved`` on the second SIGINT and exits 0."""

import argparse
import signal
import sys
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--saved", required=True)
args = parser.parse_args()
interrupts = 0


def on_interrupt(signum, frame):
    global interrupts
    interrupts += 1
    print(f"interrupt {interrupts}", flush=True)
    if interrupts == 2:
        with open(args.saved, "w") as saved:
            saved.write("second")
        sys.exit(0)


signal.signal(signal.SIGINT, on_interrupt)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
inputs, targets = torch.randn(16, 8), torch.randn(16, 1)
while True:
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    time.sleep(0.02)
