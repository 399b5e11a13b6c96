"""Gradient accumulation: three micro-batches per optimizer step; prints the dtype of each forward's
output, so that what autocast covers is visible."""

import torch

torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(6):
    optimizer.zero_grad()
    dtypes = []
    for _ in range(3):
        out = model(torch.randn(8, 3))
        dtypes.append(str(out.dtype).removeprefix("torch."))
        (out.float().pow(2).mean() / 3).backward()
    optimizer.step()
    print(f"step={step} forwards={','.join(dtypes)}", flush=True)
