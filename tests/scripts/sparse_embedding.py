"""A sparse embedding (``nn.Embedding(sparse=True)``) trained by SparseAdam beside a dense head trained by Adam
(``--alone``: the embedding alone, SparseAdam the only optimizer). Prints each step's loss and the global
gradient norm as the dense gradients' would be: ``TRUTH {"step": S, "loss": L, "grad_norm": G}``."""

import argparse
import json

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--alone", action="store_true")
args = parser.parse_args()

torch.manual_seed(0)
embedding = torch.nn.Embedding(1000, 16, sparse=True)
head = torch.nn.Linear(16, 1)
optimizers = [torch.optim.SparseAdam(list(embedding.parameters()), lr=1e-2)]
if not args.alone:
    optimizers.append(torch.optim.Adam(head.parameters(), lr=1e-2))
for step in range(20):
    indices = torch.randint(0, 100, (64,))  # (indices that come more than once: their gradients add up)
    vectors = embedding(indices)
    loss = head(vectors).pow(2).mean() if not args.alone else (vectors - 1).pow(2).mean()
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    grads = [p.grad.to_dense() for p in [*embedding.parameters(), *head.parameters()] if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    for optimizer in optimizers:
        optimizer.step()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item(), "grad_norm": grad_norm.item()}), flush=True)
