"""A convolutional net that is heavy for a CPU, on in-memory tensors: the model's math is the bottleneck."""

import argparse
import json
import time

import torch
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--tail-s", type=float, default=0.0, help="seconds of idle work after the training (a save)")
parser.add_argument("--times", help="a JSON file for each step's [CPU time of this thread, wall time], in seconds")
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 32, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(32, 64, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(64, 64, 3, padding=1),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(64, 10),
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
images, labels = torch.randn(16, 3, 32, 32), torch.randint(10, (16,))
times = []  # each step's CPU time and wall time, this thread's own: what the machine's load let it have of a core
for _ in range(args.steps):
    wall, cpu = time.perf_counter(), time.thread_time()
    loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    times.append([time.thread_time() - cpu, time.perf_counter() - wall])
print(f"heavy_cnn: {args.steps} steps", flush=True)
if args.times:
    with open(args.times, "w") as handle:
        json.dump(times, handle)
if args.tail_s:
    time.sleep(args.tail_s)
