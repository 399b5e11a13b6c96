"""A script that profiles two of its steps itself with torch.profiler: optwatch's own profiler window may
overlap them (there is one profiling session per process)."""

import torch
from torch.profiler import ProfilerActivity, profile

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
x, y = torch.randn(16, 3), torch.randn(16, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


def step(index):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    print(f"step={index} loss={loss.item():.8f}", flush=True)


for index in range(4):
    step(index)
with profile(activities=[ProfilerActivity.CPU]) as own:  # steps 4 and 5
    for index in range(4, 6):
        step(index)
print("addmm calls:", {event.key: event.count for event in own.key_averages()}.get("aten::addmm"), flush=True)
for index in range(6, 8):
    step(index)
