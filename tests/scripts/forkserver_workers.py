"""A DataLoader whose workers a forkserver starts (not children of the training process), beside a
multiprocessing Pool (children that are no DataLoader workers) and a validation loader with workers of its
own, run every 50 steps outside ``no_grad`` (the forward inside it). Prints the training loader's workers'
pids, as the DataLoader itself holds them: ``WORKERS [pid, ...]``. No optwatch import.

    python forkserver_workers.py [--context forkserver|spawn] [--seconds S]
"""

import argparse
import json
import multiprocessing
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--context", default="forkserver")
parser.add_argument("--seconds", type=float, default=3.0)
args = parser.parse_args()


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 10_000

    def __getitem__(self, index):
        deadline = time.perf_counter() + 0.002
        while time.perf_counter() < deadline:
            pass
        return torch.randn(4), torch.randn(1)


def square(x):
    return x * x


if __name__ == "__main__":
    torch.set_num_threads(1)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    context = multiprocessing.get_context(args.context)
    with context.Pool(2) as pool:
        pool.map(square, range(4))
        loader = torch.utils.data.DataLoader(
            Slow(), batch_size=8, num_workers=2, multiprocessing_context=context, persistent_workers=True
        )
        validation = torch.utils.data.DataLoader(
            Slow(), batch_size=8, num_workers=2, multiprocessing_context=context, persistent_workers=True
        )
        iterator = iter(loader)
        print("WORKERS " + json.dumps(sorted(w.pid for w in iterator._workers)), flush=True)
        started = time.perf_counter()
        for step, (x, y) in enumerate(iterator):
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 50 == 10:
                for _, (x, _y) in zip(range(3), validation):
                    with torch.no_grad():
                        model(x)
            if time.perf_counter() - started > args.seconds:
                break
