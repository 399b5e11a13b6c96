"""A model whose first layer has a full backward hook while its inputs need no gradient: torch warns from
inside backward(), with a stacklevel meant to name the script's line. No optwatch import."""

import torch

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
model[0].register_full_backward_hook(lambda module, grad_in, grad_out: None)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(60):
    loss = model(torch.randn(16, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"done {loss.item():.6f}")
