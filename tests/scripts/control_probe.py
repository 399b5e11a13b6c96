"""A plain script that prints, each step, what the controls are supposed to change, as seen from inside.
``--watch``: it calls ``optwatch.watch(model, optimizer)`` (run with plain ``python``, a run of its own)."""

import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--watch", action="store_true")
args = parser.parse_args()


class Probe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 1)

    def forward(self, x):
        self.autocast = torch.is_autocast_enabled("cpu") and str(torch.get_autocast_dtype("cpu"))
        self.cudnn = torch.backends.cudnn.benchmark
        return self.linear(x)


torch.manual_seed(0)
model = Probe()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(16, 8), torch.randn(16, 1)
if args.watch:
    import optwatch

    optwatch.watch(model, optimizer)
for step in range(args.steps):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x).float(), y)
    loss.backward()
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    print(f"step={step} lr={lr!r} cudnn={model.cudnn} autocast={model.autocast}", flush=True)
    if args.sleep:
        import time

        time.sleep(args.sleep)
