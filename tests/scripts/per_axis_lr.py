"""A hand-written optimizer whose learning rate is not one number (a pair: weights, then bias), as some
research code has it: optwatch must train it as it is, without reading or setting that rate."""

import torch


class PerKindSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=(0.1, 0.05)):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"][0 if p.dim() > 1 else 1])


torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = PerKindSGD(model.parameters())
x, y = torch.randn(16, 4), torch.randn(16, 1)
for step in range(8):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    print(f"step={step} loss={loss.item():.6f}", flush=True)
