"""A hand-written loop that makes its LR scheduler before it calls ``optwatch.watch`` (as Lightning's callback
does, at the training's start), so optwatch never saw the scheduler made. Per step:

    TRUTH {"step": S, "reported": the scheduler's get_last_lr() at the step's start (what a logger reads),
           "used": the param group's rate after backward(), which the optimizer's step uses}

The schedule, by hand: 0.01 x (1 + 0.1 S).
"""

import json

import torch

import optwatch

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 + 0.1 * step)
optwatch.watch(model, optimizer)
for step in range(12):
    reported = scheduler.get_last_lr()[0]
    optimizer.zero_grad()
    model(torch.randn(16, 8)).pow(2).mean().backward()
    print("TRUTH " + json.dumps({"step": step, "reported": reported, "used": optimizer.param_groups[0]["lr"]}))
    optimizer.step()
    scheduler.step()
