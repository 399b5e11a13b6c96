"""An autoencoder with an optimizer for each half on the one loss, the decoder's stepping every second
iteration and before the encoder's (which steps every iteration: optwatch's primary). No optwatch import.

    TRUTH {"step": S, "loss": the loss backpropagated in that iteration}
"""

import json

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)
encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
decoder = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32))
encoder_optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
decoder_optimizer = torch.optim.SGD(decoder.parameters(), lr=0.05, momentum=0.9)
basis = torch.randn(8, 32)
for step in range(40):
    x = torch.randn(64, 8) @ basis + 0.05 * torch.randn(64, 32)
    loss = nn.functional.mse_loss(decoder(encoder(x)), x)
    loss.backward()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item()}), flush=True)
    if step % 2:
        decoder_optimizer.step()
    encoder_optimizer.step()
    encoder_optimizer.zero_grad()
    decoder_optimizer.zero_grad()
