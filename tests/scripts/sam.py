"""Sharpness-aware minimization as its reference implementation (davda54/sam) writes it: a first pass, the
weights moved up the gradient (``first_step``, which zeroes the gradients), a second pass, whose gradients the
base optimizer applies at the first pass's weights (``second_step``). SAM's users log the first pass's loss.
``--closure``: the README's second form, ``loss.backward(); optimizer.step(closure)``.
Prints per step: ``TRUTH {"step": S, "loss": first pass's, "grad_norm": the second pass's gradients'}``."""

import json
import sys

import torch


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        grad_norm = torch.norm(torch.stack([p.grad.norm(2) for g in self.param_groups for p in g["params"]]), 2)
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * scale)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure=None):
        """Its README's second form: ``loss.backward(); optimizer.step(closure)``, the closure the second pass."""
        self.first_step(zero_grad=True)
        torch.enable_grad()(closure)()
        self.second_step()


torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
inputs, labels = torch.randn(64, 20), torch.randint(0, 5, (64,))
closure_form = sys.argv[1:] == ["--closure"]
for step in range(30):
    loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    loss.backward()
    if closure_form:
        second: dict[str, torch.Tensor] = {}

        def closure(second=second):
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
            second["norm"] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))

        optimizer.step(closure)
        optimizer.zero_grad()
        grad_norm = second["norm"]
    else:
        optimizer.first_step(zero_grad=True)
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        optimizer.second_step(zero_grad=True)
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item(), "grad_norm": grad_norm.item()}), flush=True)
