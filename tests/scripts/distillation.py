"""Knowledge distillation from four teachers: each called once without gradients, then the student, per step.
Prints per step how long its teachers and its student took by the script's own clock:
``STEP {"step": S, "forward_s": F}``."""

import json
import time

import torch

torch.manual_seed(0)
torch.set_num_threads(1)


def mlp(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))


teachers = [mlp(1024).eval() for _ in range(4)]
student = mlp(32)
optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
inputs = torch.randn(256, 64)
for step in range(30):
    began = time.perf_counter()
    with torch.no_grad():
        # (the last teacher on the batch in two halves, as a teacher too big for it at once is)
        outputs = [teacher(inputs) for teacher in teachers[:-1]]
        outputs.append(torch.cat([teachers[-1](half) for half in inputs.chunk(2)]))
        soft = torch.stack(outputs).mean(0).softmax(-1)
    logits = student(inputs)
    forward_s = time.perf_counter() - began
    loss = torch.nn.functional.kl_div(logits.log_softmax(-1), soft, reduction="batchmean")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print("STEP " + json.dumps({"step": step, "forward_s": forward_s}), flush=True)
