"""A warm-up LR scheduler of the script's own that defines __eq__, which makes it unhashable (Python drops
__hash__): optwatch watches schedulers as they are made, and must not need them hashable."""

import torch
from torch.optim.lr_scheduler import LRScheduler


class Warmup(LRScheduler):
    def __init__(self, optimizer, steps):
        self.steps = steps
        super().__init__(optimizer)

    def get_lr(self):
        return [base * min(1.0, (self.last_epoch + 1) / self.steps) for base in self.base_lrs]

    def __eq__(self, other):
        return isinstance(other, Warmup) and self.state_dict() == other.state_dict()


torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
x, y = torch.randn(16, 3), torch.randn(16, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
schedule = Warmup(optimizer, 4)
for step in range(8):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    schedule.step()
    print(f"step={step} loss={loss.item():.6f} lr={optimizer.param_groups[0]['lr']:.6f}", flush=True)
