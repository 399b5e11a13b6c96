"""Batches a ``collate_fn`` of the script's own makes: ``--collate list`` keeps the samples as a list of
variable-length token tensors (``lambda batch: batch``), ``--collate detection`` makes a detection model's
``tuple(zip(*batch))`` (a tuple of images of different sizes, a tuple of target dicts): 50 samples in batches
of 8, the last has 2. ``--collate made``: a dataset of batches made beforehand (8 or 6 samples each), taken
one at a time and unwrapped (``batch_size=1``, ``lambda batch: batch[0]``). Prints each step's samples:
``TRUTH {"step": S, "samples": N, "loss": L}``."""

import argparse
import json

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--collate", choices=["list", "detection", "made"], default="list")
args = parser.parse_args()


class Samples(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 50 if args.collate != "made" else 7

    def __getitem__(self, i: int):
        generator = torch.Generator().manual_seed(i)
        if args.collate == "list":
            return torch.randint(0, 100, (5 + i % 7,), generator=generator)
        if args.collate == "made":
            count = 8 if i % 2 else 6
            return torch.rand(count, 3, 12, 12, generator=generator), torch.arange(count) % 5
        image = torch.rand(3, 12 + (i % 3) * 4, 12 + (i % 2) * 4, generator=generator)
        return image, {"labels": torch.tensor([i % 5])}


def collate(batch):
    if args.collate == "made":
        return batch[0]
    return batch if args.collate == "list" else tuple(zip(*batch))


torch.manual_seed(0)
if args.collate == "list":
    model = torch.nn.EmbeddingBag(100, 5)
else:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 5))  # fmt: skip
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
batch_size = 1 if args.collate == "made" else 8
loader = torch.utils.data.DataLoader(Samples(), batch_size=batch_size, shuffle=True, collate_fn=collate)
step = 0
for _epoch in range(2):
    for batch in loader:
        if args.collate == "list":
            logits = torch.cat([model(tokens.unsqueeze(0)) for tokens in batch])
            labels = torch.tensor([int(tokens[0]) % 5 for tokens in batch])
            samples = len(batch)
        elif args.collate == "made":
            images, labels = batch
            logits = model(images)
            samples = len(images)
        else:
            images, targets = batch
            logits = torch.cat([model(image.unsqueeze(0)) for image in images])
            labels = torch.cat([target["labels"] for target in targets])
            samples = len(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print("TRUTH " + json.dumps({"step": step, "samples": samples, "loss": loss.item()}), flush=True)
        step += 1
