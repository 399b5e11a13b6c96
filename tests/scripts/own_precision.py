"""A script that picks its own precision, as LLM scripts do: nanoGPT's ``ctx = torch.autocast(...)`` around
the forward (``--autocast``), or the weights themselves in bfloat16 (``--weights bfloat16``); with
``--compile``, the forward and its autocast are one compiled function. Its evaluation runs every
``--eval-every`` steps, under autocast whatever the training does (``--eval-autocast``)."""

import argparse
import contextlib

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--autocast", choices=("bfloat16", "float16"))
parser.add_argument("--weights", choices=("float32", "bfloat16"), default="float32")
parser.add_argument("--eval-every", type=int, default=0)
parser.add_argument("--eval-autocast", action="store_true")
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--compile", action="store_true")
args = parser.parse_args()

torch.manual_seed(0)
dtype = getattr(torch, args.weights)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)).to(dtype)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
ctx = torch.autocast("cpu", dtype=getattr(torch, args.autocast)) if args.autocast else contextlib.nullcontext()
inputs, targets = torch.randn(64, 32, dtype=dtype), torch.randn(64, 1, dtype=dtype)


def forward(inputs, targets):
    with ctx:
        out = model(inputs)
        return out, torch.nn.functional.mse_loss(out.float(), targets.float())


if args.compile:  # (aot_eager: compiled as inductor would, without its C++ build)
    forward = torch.compile(forward, backend="aot_eager")
for step in range(args.steps):
    out, loss = forward(inputs, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    print(f"step={step} forward={str(out.dtype).removeprefix('torch.')} loss={loss.item():.4f}", flush=True)
    if args.eval_every and step % args.eval_every == 0:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.eval_autocast):
            for _ in range(20):
                model(inputs)
    if args.sleep:
        import time

        time.sleep(args.sleep)
