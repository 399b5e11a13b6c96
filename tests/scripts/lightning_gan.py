"""PyTorch Lightning with manual optimization and two optimizers, as its GAN example trains: per batch the
discriminator steps, then the generator. Lightning's ``global_step`` counts both optimizers' steps (two a
batch); its loggers' ``step`` counts batches. ``--resume CKPT`` goes on from a checkpoint; ``--save CKPT``
writes one at the end. ``--callback`` adds optwatch's Lightning callback. No other optwatch import.

The ground truth is Lightning's own CSVLogger (``--logs DIR``): ``d_loss`` and ``g_loss`` logged at every
batch (``log_every_n_steps=1``), at the ``step`` its loggers use.
"""

import argparse
import logging
import warnings

warnings.filterwarnings("ignore")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch import nn  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--batches", type=int, default=10, help="batches this run trains")
parser.add_argument("--logs", required=True)
parser.add_argument("--resume")
parser.add_argument("--save")
parser.add_argument("--callback", action="store_true")
parser.add_argument(
    "--toggle", action="store_true", help="each optimizer's step inside toggle_optimizer, as the tutorial"
)
args = parser.parse_args()


class GAN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def training_step(self, batch, batch_index):
        (real,) = batch
        opt_d, opt_g = self.optimizers()
        noise = torch.randn(real.size(0), 4)
        fake = self.generator(noise)
        ones, zeros = torch.ones(real.size(0), 1), torch.zeros(real.size(0), 1)
        d_loss = nn.functional.binary_cross_entropy_with_logits(
            self.discriminator(real), ones
        ) + nn.functional.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros)
        # (--toggle: the other network's parameters have requires_grad=False while each one steps)
        if args.toggle:
            self.toggle_optimizer(opt_d)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        if args.toggle:
            self.untoggle_optimizer(opt_d)
            self.toggle_optimizer(opt_g)
        g_loss = nn.functional.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        if args.toggle:
            self.untoggle_optimizer(opt_g)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, on_step=True, on_epoch=False)

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.discriminator.parameters(), lr=2e-3),
            torch.optim.Adam(self.generator.parameters(), lr=2e-3),
        )


torch.set_num_threads(1)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
pl.seed_everything(0, verbose=False)
data = torch.utils.data.TensorDataset(torch.randn(640, 8) + 2.0)
loader = torch.utils.data.DataLoader(data, batch_size=16)
callbacks = []
if args.callback:
    from optwatch.integrations.lightning import OptwatchCallback

    callbacks.append(OptwatchCallback())
done = 0
if args.resume:
    done = torch.load(args.resume, weights_only=False)["global_step"] // 2  # two optimizer steps a batch
trainer = pl.Trainer(
    callbacks=callbacks,
    accelerator="cpu",
    devices=1,
    max_steps=2 * (done + args.batches),  # global_step: both optimizers' steps
    logger=CSVLogger(args.logs, name="", version=""),
    log_every_n_steps=1,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
model = GAN()  # (a global, as Lightning's examples have it: its name is both optimizers' model's)
trainer.fit(model, loader, ckpt_path=args.resume)
if args.save:
    trainer.save_checkpoint(args.save)
