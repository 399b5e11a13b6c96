"""An optimizer that steps another inside its own step: ZeroRedundancyOptimizer (here over one gloo rank) wraps
AdamW and calls its ``step()`` from its own, as Lookahead and SAM wrappers do. The script's loss, gradient
norm and learning rate per step. No optwatch import.

    TRUTH {"step": S, "loss": ..., "grad_norm": ..., "lr": ...}
"""

import json
import os
import tempfile

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

torch.set_num_threads(1)
torch.manual_seed(0)
rendezvous = os.path.join(tempfile.mkdtemp(), "rendezvous")
dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
generator = torch.Generator().manual_seed(1)
for step in range(30):
    inputs, targets = torch.randn(32, 16, generator=generator), torch.randint(0, 4, (32,), generator=generator)
    loss = nn.functional.cross_entropy(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    truth = {"step": step, "loss": loss.item(), "grad_norm": float(grad_norm), "lr": lr}
    print("TRUTH " + json.dumps(truth), flush=True)
dist.destroy_process_group()
