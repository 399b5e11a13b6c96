"""A tiny model fed by a Dataset that sleeps in __getitem__ (a slow disk): the loop waits for data."""

import argparse
import time

import torch
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--workers", type=int, default=2)
parser.add_argument("--sleep", type=float, default=0.01, help="seconds per sample")
args = parser.parse_args()


class SlowDataset(Dataset):
    def __len__(self):
        return 100_000

    def __getitem__(self, index):
        time.sleep(args.sleep)
        return torch.randn(8), torch.randn(1)


torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
loader = DataLoader(SlowDataset(), batch_size=8, num_workers=args.workers)
for step, (x, y) in enumerate(loader):
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step + 1 == args.steps:
        break
print(f"slow_data: {args.steps} steps", flush=True)
