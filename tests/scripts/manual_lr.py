"""nanoGPT-style learning rate: ``get_lr(it)`` (linear warmup, then cosine decay to min_lr) assigned to every
``param_group['lr']`` at the top of each iteration, no scheduler object; batches from a ``get_batch`` of
random slices of a token tensor, no DataLoader. Plain torch on the CPU, with its own ground truth. No
optwatch import.

    TRUTH {"step": S, "loss": ..., "grad_norm": ..., "lr": the lr the step's optimizer.step() used,
           "script_lr": the lr the script assigned (the same, unless changed from outside),
           "logged_lr": the param group's lr read after backward() and the clip, before optimizer.step(),
           "samples": sequences in the step's batch}

``grad_norm``: the pre-clip norm ``clip_grad_norm_(model.parameters(), 1.0)`` returned, as nanoGPT clips.
"""

import argparse
import json
import math

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
VOCAB, BLOCK, BATCH = 32, 16, 8
learning_rate, min_lr, warmup_iters, lr_decay_iters = 3e-3, 3e-4, 5, 25

data = torch.randint(0, VOCAB, (4096,))


def get_batch():
    ix = torch.randint(len(data) - BLOCK - 1, (BATCH,))
    x = torch.stack([data[i : i + BLOCK] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + BLOCK] for i in ix])
    return x, y


def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


model = nn.Sequential(nn.Embedding(VOCAB, 32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, VOCAB))
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1)

used = []  # the lr each update really uses (a step pre-hook of the optimizer's own runs last)
optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))

X, Y = get_batch()
for it in range(args.steps):
    lr = get_lr(it)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    logits = model(X)
    loss = nn.functional.cross_entropy(logits.view(-1, VOCAB), Y.view(-1))
    X, Y = get_batch()  # the next batch, fetched while (on a GPU) the forward runs, as nanoGPT does
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    logged_lr = optimizer.param_groups[0]["lr"]  # what a loop that logs its rate before the update reads
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    record = {
        "step": it,
        "loss": loss.item(),
        "grad_norm": float(norm),
        "lr": used[-1],
        "script_lr": lr,
        "logged_lr": logged_lr,
    }
    record["samples"] = BATCH
    print(f"TRUTH {json.dumps(record)}", flush=True)
