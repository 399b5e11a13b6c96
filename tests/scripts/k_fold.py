"""k-fold cross-validation in one process: each fold trains a new model with a new optimizer, the last
fold's dropped. No optwatch import.

    TRUTH {"step": the step over all folds, "fold": F, "loss": ..., "grad_norm": ..., "lr": ...}
"""

import argparse
import json
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--sleep", type=float, default=0.0, help="seconds of other work in each step")
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
inputs = torch.randn(480, 12)
labels = (inputs[:, :4].sum(1) > 0).long()
folds = torch.arange(480) % 3
step = 0
for fold in range(3):
    train = TensorDataset(inputs[folds != fold], labels[folds != fold])
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3 * (fold + 1))
    for batch, target in DataLoader(train, batch_size=16, shuffle=True):
        loss = nn.functional.cross_entropy(model(batch), target)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        optimizer.step()
        truth = {
            "step": step,
            "fold": fold,
            "loss": loss.item(),
            "grad_norm": grad_norm.item(),
            "lr": 1e-3 * (fold + 1),
        }
        print("TRUTH " + json.dumps(truth), flush=True)
        time.sleep(args.sleep)
        step += 1
    with torch.no_grad():
        held_out = inputs[folds == fold]
        accuracy = (model(held_out).argmax(1) == labels[folds == fold]).float().mean().item()
    print(f"fold {fold}: accuracy {accuracy:.3f}", flush=True)
