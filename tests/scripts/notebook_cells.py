"""A notebook session in a real IPython shell (what ipykernel runs cells with): cells one after another, a
person's pause between two of them, commands sent as the dashboard would (they are applied at a step)."""

import sys
import time

from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
cells = [
    "import torch, optwatch\n"
    "torch.manual_seed(0)\n"
    "model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))\n"
    "opt = torch.optim.SGD(model.parameters(), lr=0.05)\n"
    "x, y = torch.randn(32, 4), torch.randn(32, 1)\n"
    "def train(steps):\n"
    "    for _ in range(steps):\n"
    "        opt.zero_grad(); torch.nn.functional.mse_loss(model(x), y).backward(); opt.step()\n"
    "probe = optwatch.watch(model, opt)",
    "train(30)",
    "probe.commands.append({'id': 'a', 'command': 'amp=on', 'source': 'ctl'}); train(5)",
    "with torch.no_grad(): print('evaluation dtype', model(x).dtype)",
    "train(5); print('in autocast again', torch.is_autocast_enabled('cpu'))",
    "probe.commands.append({'id': 'b', 'command': 'stop', 'source': 'ctl'}); train(5)",
    "print('after the stop, steps', probe.step)",
]
for index, cell in enumerate(cells):
    shell.run_cell(cell)
    sys.stdout.flush()
    if index == 1:
        time.sleep(1.0)  # the person reads the output before the next cell
