"""A small ResNet-style CNN on CIFAR-10, the optwatch demo.

    optwatch examples/cifar.py --steps 300          # under the dashboard
    python examples/cifar.py                        # plain; `optwatch attach` can still watch it

Uses torchvision's CIFAR10 when torchvision imports and the data is at --data (or can be downloaded);
otherwise says so in one line and trains on a built-in synthetic CIFAR-shaped dataset that is
learnable, so the loss visibly falls within a hundred steps even on a laptop CPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

try:
    import optwatch
except ImportError:  # the example also runs without optwatch installed
    optwatch = None

NUM_CLASSES = 10


class SyntheticCIFAR(Dataset):
    """CIFAR-shaped images: a fixed random pattern per class, shifted and buried in noise."""

    def __init__(self, size: int = 50_000, seed: int = 0, noise: float = 2.0):
        # The class patterns are the same for every split; only the samples differ by seed.
        generator = torch.Generator().manual_seed(1234)
        self.templates = torch.randn(NUM_CLASSES, 3, 32, 32, generator=generator)
        self.size = size
        self.seed = seed
        self.noise = noise

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(NUM_CLASSES, (1,), generator=generator))
        shift = torch.randint(-4, 5, (2,), generator=generator).tolist()
        image = torch.roll(self.templates[label], shifts=shift, dims=(1, 2))
        image = image + self.noise * torch.randn(3, 32, 32, generator=generator)
        return image, label


def cifar_datasets(data_dir: str):
    """torchvision's CIFAR10 if it can be had, else the synthetic stand-in (with a one-line reason)."""
    try:
        import torchvision
        import torchvision.transforms as T
    except Exception as exc:  # ImportError, or compiled ops that fail against this torch build
        reason = f"torchvision unavailable ({type(exc).__name__})"
    else:
        normalize = T.Compose([T.ToTensor(), T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
        try:
            train = torchvision.datasets.CIFAR10(data_dir, train=True, download=True, transform=normalize)
            test = torchvision.datasets.CIFAR10(data_dir, train=False, download=True, transform=normalize)
            return train, test, "CIFAR-10"
        except Exception as exc:
            reason = f"CIFAR-10 not found at {data_dir} and not downloadable ({type(exc).__name__})"
    print(f"cifar: {reason}; training on synthetic CIFAR-shaped data", flush=True)
    return SyntheticCIFAR(50_000, seed=0), SyntheticCIFAR(2_000, seed=1), "synthetic"


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = ResidualBlock(width, width, stride=2)  # 16x16
        self.layer2 = ResidualBlock(width, 2 * width, stride=2)  # 8x8
        self.layer3 = ResidualBlock(2 * width, 4 * width, stride=2)  # 4x4
        self.head = nn.Linear(4 * width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("cifar: --device cuda asked for, but no CUDA device is available")
    return torch.device(choice)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, batches: int = 4) -> float:
    model.eval()
    correct = total = 0
    for index, (images, labels) in enumerate(loader):
        if index == batches:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        correct += (model(images).argmax(1) == labels).sum()
        total += labels.numel()
    model.train()
    return float(correct) / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=0, help="stop after this many optimizer steps (0: no limit)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--data", default="./data", help="where CIFAR-10 is (or is downloaded to)")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between quick evaluations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    train_set, test_set, source = cifar_datasets(args.data)
    loader_options = dict(
        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0
    )
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, **loader_options)
    test_loader = DataLoader(test_set, batch_size=256, **loader_options)

    model = SmallResNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    watcher = optwatch.watch(model, optimizer, batch_size=args.batch_size) if optwatch else None
    print(f"cifar: {source}, {len(train_set)} images, batch {args.batch_size}, device {device}", flush=True)

    step = 0
    started = time.perf_counter()
    for epoch in range(args.epochs):
        for images, labels in train_loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if args.eval_every and step % args.eval_every == 0:
                accuracy = evaluate(model, test_loader, device)
                # .item() here only, on evaluation steps: the loop itself never waits for the device.
                print(f"epoch {epoch} step {step} loss {loss.item():.4f} eval_acc {accuracy:.3f}", flush=True)
                if watcher is not None:
                    watcher.log(eval_acc=accuracy)
            if step == args.steps:
                break
        if step == args.steps:
            break
    elapsed = time.perf_counter() - started
    print(f"cifar: {step} steps in {elapsed:.1f}s ({step * args.batch_size / elapsed:.0f} samples/s)", flush=True)


if __name__ == "__main__":
    main()
