"""Variable-length samples batched as a nested tensor (torch.nested, the strided layout), whose size
torch cannot report: optwatch must train it as it is, counting what it can."""

import torch


class Sequences(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, index):
        return torch.randn(2 + index % 5, 4), torch.randn(1)


def collate(samples):
    return torch.nested.nested_tensor([x for x, _ in samples]), torch.stack([y for _, y in samples])


torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
loader = torch.utils.data.DataLoader(Sequences(), batch_size=4, collate_fn=collate)
for step, (sequences, targets) in enumerate(loader):
    pooled = torch.stack([sequence.mean(0) for sequence in sequences.unbind()])
    loss = torch.nn.functional.mse_loss(model(pooled), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step={step} loss={loss.item():.6f}", flush=True)
