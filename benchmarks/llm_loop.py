"""A small GPT trained the way popular LLM scripts (nanoGPT and its descendants) train: AdamW with decayed
and undecayed param groups, a warmup/cosine learning rate the script assigns to the param groups at every
iteration, gradient accumulation, ``clip_grad_norm_``, and the script's own per-iteration timer.

Synthetic tokens, CPU by default, one intra-op thread so that a step is a steady 5-10 ms on a small machine.
It prints ``iter N: loss L, time T ms`` like nanoGPT and, at the end, one ``LOOP_TIMES {json}`` line with
every iteration's wall time and the process's CPU time (``benchmarks/wall_clock.py`` reads it).

    python benchmarks/llm_loop.py --iters 300 [--device cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import math

import torch
from lockstep import LoopTimes
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.mlp_proj = nn.Linear(4 * width, width)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(attended.transpose(1, 2).contiguous().view(batch, length, width))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, layers: int, width: int, heads: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2 does

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def get_lr(it: int, warmup: int, decay_iters: int, max_lr: float, min_lr: float) -> float:
    if it < warmup:
        return max_lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accumulate", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--quiet", action="store_true", help="no per-iteration line")
    return parser.parse_args(argv)


class Training:
    """The model, the optimizer and the data of the loop; ``iteration(it)`` is one iteration of it."""

    def __init__(self, args: argparse.Namespace):
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        torch.manual_seed(1337)
        self.args = args
        self.device = torch.device(args.device)
        vocab = 256
        self.model = GPT(vocab, args.context, args.layers, args.width, heads=4).to(self.device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=6e-4,
            betas=(0.9, 0.95),
        )
        self.data = torch.randint(0, vocab, (4096,), generator=torch.Generator().manual_seed(0))
        self.x, self.y = self.batch()
        self.loss: torch.Tensor | None = None

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        args, data = self.args, self.data
        starts = torch.randint(0, len(data) - args.context - 1, (args.batch,))
        x = torch.stack([data[s : s + args.context] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + args.context] for s in starts])
        return x.to(self.device), y.to(self.device)

    def iteration(self, it: int) -> None:
        args, model, optimizer = self.args, self.model, self.optimizer
        lr = get_lr(it, warmup=20, decay_iters=args.iters, max_lr=6e-4, min_lr=6e-5)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(args.accumulate):
            self.loss = model(self.x, self.y) / args.accumulate
            self.x, self.y = self.batch()
            self.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def main() -> None:
    args = parse_args()
    training = Training(args)
    clock = LoopTimes()
    clock.start()  # under benchmarks/wall_clock.py's time slicing: the go of the round
    for it in range(args.iters):
        training.iteration(it)
        seconds = clock.lap()
        if not args.quiet:
            loss = training.loss.item() * args.accumulate
            print(f"iter {it}: loss {loss:.4f}, time {1000 * seconds:.2f} ms", flush=True)
        clock.go()
    clock.print()


if __name__ == "__main__":
    main()
