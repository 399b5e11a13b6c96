"""No optimizer object: manual SGD after clipping, as PyTorch's word_language_model example trains
(``model.zero_grad(); loss.backward(); clip_grad_norm_(...); p.data.add_(p.grad, alpha=-lr)``), on a small
LSTM language model over a synthetic token stream, batches by slicing (no DataLoader). Plain torch on the
CPU, with its own ground truth. No optwatch import.

With no optimizer, each backward() on the loss is a step (optwatch counts from 0 here too).

    TRUTH {"step": S, "loss": ..., "grad_norm": pre-clip norm clip_grad_norm_ returned, "samples": sequences,
           "forward_s": the model's call, timed by the script}
"""

import argparse
import json
import time

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
VOCAB, BPTT, BATCH, CLIP, LR = 40, 12, 8, 0.25, 5.0


class RNNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, 16)
        self.rnn = nn.LSTM(16, 32)
        self.decoder = nn.Linear(32, VOCAB)

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(output).view(-1, VOCAB), hidden


stream = torch.arange(BPTT * BATCH * args.steps + 1) * 7 % VOCAB  # a learnable rule, as a token stream
stream[torch.rand(len(stream)) < 0.2] = 0
source = stream[: (len(stream) - 1) // BATCH * BATCH].view(BATCH, -1).t().contiguous()  # batchify: (len, batch)


def get_batch(i):
    seq_len = min(BPTT, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


model = RNNModel()
criterion = nn.NLLLoss()
hidden = (torch.zeros(1, BATCH, 32), torch.zeros(1, BATCH, 32))
for step, i in enumerate(range(0, source.size(0) - 1, BPTT)):
    if step >= args.steps:
        break
    data, targets = get_batch(i)
    model.zero_grad()
    hidden = tuple(h.detach() for h in hidden)  # repackage_hidden
    began = time.perf_counter()
    output, hidden = model(data, hidden)
    forward_s = time.perf_counter() - began
    loss = criterion(torch.log_softmax(output, dim=-1), targets)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-LR)
    record = {"step": step, "loss": loss.item(), "grad_norm": float(norm), "samples": int(data.size(1))}
    record["forward_s"] = forward_s  # the model's call
    print(f"TRUTH {json.dumps(record)}", flush=True)
