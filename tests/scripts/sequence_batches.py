"""A GRU over variable-length sequences batched as recurrent layers take them by default: sequence first,
``pad_sequence`` giving (T, B), with the lengths beside; or ``--packed``, a PackedSequence. The batch sizes
vary (a bucketing sampler's). The script counts its own sequences per step. No optwatch import.

    TRUTH {"step": S, "samples": sequences in the step's batch, "loss": ...}
"""

import argparse
import json

import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence, pad_sequence

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=24)
parser.add_argument("--packed", action="store_true")
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
generator = torch.Generator().manual_seed(1)
sizes = [int(n) for n in torch.randint(5, 40, (args.steps,), generator=generator)]
lengths = torch.randint(3, 30, (sum(sizes),), generator=generator)
sequences = [torch.randint(1, 20, (int(n),), generator=generator) for n in lengths]
batches, start = [], 0
for size in sizes:  # batches of varying size, as a bucketing sampler makes them
    batches.append(list(range(start, start + size)))
    start += size


def collate(items):
    lengths = torch.tensor([len(s) for s in items])
    if args.packed:
        return pack_sequence(items, enforce_sorted=False), lengths
    return pad_sequence(items), lengths  # (T, B): recurrent layers' default layout


loader = torch.utils.data.DataLoader(sequences, batch_sampler=batches, collate_fn=collate)
embed, gru, head = nn.Embedding(20, 16), nn.GRU(16, 32), nn.Linear(32, 1)
model = nn.ModuleList([embed, gru, head])
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for step, (batch, lengths) in enumerate(loader):
    if args.packed:
        packed = torch.nn.utils.rnn.PackedSequence(
            embed(batch.data), batch.batch_sizes, batch.sorted_indices, batch.unsorted_indices
        )
        _, hidden = gru(packed)
    else:
        _, hidden = gru(embed(batch))
    loss = head(hidden[-1]).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print("TRUTH " + json.dumps({"step": step, "samples": len(lengths), "loss": loss.item()}), flush=True)
