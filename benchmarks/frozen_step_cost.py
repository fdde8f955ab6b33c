"""Cost of a training step with the backbone frozen (FreezeUnfreeze) vs full fine-tuning.

Both runs fit the same ImageClassifier (EfficientNet-Lite0 with ImageNet weights from
``../shared/models/efficientnet_lite0``) on the same random batches for the same number of steps,
one after the other in this process, and report seconds per step (the first steps are warm-up and
not timed). The frozen run is ``FreezeUnfreeze(unfreeze_at_epoch=None)``: head only, no backward
through the backbone.

    python benchmarks/frozen_step_cost.py --steps 20 --batch-size 16 --image-size 128

``--smoke`` times 2 steps (after 1 untimed) of batches of 2 images at 32 px on timm's ``test_efficientnet``
with random weights, in seconds and without ``../shared`` (a check that the script runs; its figures
mean nothing).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import ImageClassifier
from lightning_recipes.callbacks import FreezeUnfreeze

WEIGHTS = Path(__file__).resolve().parents[1] / ".." / "shared" / "models" / "efficientnet_lite0"


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.times = warmup, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)


def seconds_per_step(frozen: bool, args: argparse.Namespace) -> float:
    L.seed_everything(0, verbose=False)
    if args.smoke:
        backbone, pretrained = "test_efficientnet", False
    elif WEIGHTS.is_dir():
        backbone, pretrained = f"local-dir:{WEIGHTS}", True
    else:
        backbone, pretrained = "efficientnet_lite0", False
    model = ImageClassifier(backbone, num_classes=10, pretrained=pretrained, lr=1e-3)
    n = (args.steps + args.warmup) * args.batch_size
    data = TensorDataset(torch.randn(n, 3, args.image_size, args.image_size), torch.randint(0, 10, (n,)))
    timer = StepTimer(args.warmup)
    callbacks = [timer, FreezeUnfreeze(unfreeze_at_epoch=None)] if frozen else [timer]
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=args.batch_size))
    return sorted(timer.times)[len(timer.times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="a tiny model for 3 steps: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.batch_size, args.image_size = 2, 1, 2, 32
    full, frozen = seconds_per_step(False, args), seconds_per_step(True, args)
    print("\n| run | median s/step | vs full fine-tuning |\n| --- | --- | --- |")
    print(f"| full fine-tuning | {full:.3f} | 1.00x |")
    print(f"| backbone frozen (FreezeUnfreeze) | {frozen:.3f} | {full / frozen:.2f}x faster |")


if __name__ == "__main__":
    main()
