"""Wall time of a frozen epoch with and without FreezeUnfreeze's feature cache.

Two workloads, each run uncached (baseline) then cached, one after the other in this process, with the
backbone frozen for the whole run (``unfreeze_at_epoch=None``) and the same data, seed and batches:

* image: ``ImageClassifier`` on EfficientNet-Lite0 (ImageNet weights from ``../shared``), a folder of
  ``--images`` generated PNG images (3 classes) read by ``ImageDataModule`` at 224 px without
  augmentation, 10 % held out for validation;
* text: ``TextClassifier`` on MiniLM (``../shared/models/all-MiniLM-L6-v2``, dropout set to 0 so the
  frozen encoder is deterministic, mean pooling) on ``--sentences`` SST-2 training sentences
  (``max_length`` ``--max-length``), the 872 dev sentences for validation.

An epoch is timed from ``on_train_epoch_start`` to ``on_train_epoch_end`` (training and validation).
The first cached epoch builds the cache (one extra forward pass over the training and validation
data) and still trains on the data; later ones train on the cache. Uncached epochs all cost the same,
so the baseline runs ``--baseline-epochs`` epochs and its epochs after the first are averaged.

    python benchmarks/feature_cache.py --threads 1 --images 300 --sentences 8000 --epochs 5

``--smoke`` runs both workloads for 2 epochs each way on 30 images and 32 sentences, with tiny stand-ins for
``../shared`` (a 2-layer BERT, timm ``test_efficientnet`` at 32 px, toy sentences: ``benchmarks/_smoke.py``)
in seconds, on any machine (a check that the script runs; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _smoke
import lightning as L
import numpy as np
import torch
from PIL import Image

from lightning_recipes import ImageClassifier, ImageDataModule, TextClassifier, TextDataModule, connect
from lightning_recipes.callbacks import FreezeUnfreeze

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


class EpochTimer(L.Callback):
    """Seconds per epoch, training plus validation (put it first in the callback list)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def write_images(root: Path, n: int) -> Path:
    """``n`` 256 px PNG images in 3 class folders: smooth colour gradients plus noise, one hue per class."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 256)[None, :, None] * np.linspace(0, 1, 256)[:, None, None]
    for i in range(n):
        label = i % 3
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.eye(3)[label] * 0.6 + rng.uniform(0, 0.4, 3)
        pixels = 255 * np.clip(ramp * colour + rng.normal(0, 0.05, (256, 256, 3)), 0, 1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def image_run(args: argparse.Namespace, root: Path, cache: bool, epochs: int, cache_dir: str) -> list[float]:
    L.seed_everything(0, verbose=False)
    weights = args.shared / "models" / "efficientnet_lite0"
    model = ImageClassifier(f"local-dir:{weights}", num_classes=3, lr=1e-3)
    data = ImageDataModule(root=str(root), val_fraction=0.1, batch_size=32, augment=False)
    connect(model, data)
    return fit(model, data, cache, epochs, cache_dir)


def text_run(args: argparse.Namespace, cache: bool, epochs: int, cache_dir: str) -> list[float]:
    from transformers import AutoConfig

    L.seed_everything(0, verbose=False)
    encoder = args.shared / "models" / "all-MiniLM-L6-v2"
    config = AutoConfig.from_pretrained(encoder).to_dict()
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = TextClassifier(str(encoder), num_classes=2, config=config, pooling="mean", lr=1e-3)
    data = TextDataModule(
        train_file=str(args.shared / "data" / "sst2" / "train.tsv"),
        val_file=str(args.shared / "data" / "sst2" / "dev.tsv"),
        text_column="sentence", label_names=["negative", "positive"], train_size=args.sentences,
        max_length=args.max_length, batch_size=32, eval_batch_size=128, cache_dir=cache_dir + "-hf",
    )  # fmt: skip
    connect(model, data)
    return fit(model, data, cache, epochs, cache_dir)


def fit(model: L.LightningModule, data: L.LightningDataModule, cache: bool, epochs: int, cache_dir: str):
    timer = EpochTimer()
    callback = FreezeUnfreeze(unfreeze_at_epoch=None, cache_features=cache, cache_dir=cache_dir)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[timer, callback],
    )  # fmt: skip
    trainer.fit(model, data)
    return timer.seconds


def report(name: str, uncached: list[float], cached: list[float]) -> None:
    base = sum(uncached[1:]) / len(uncached[1:])
    later = sum(cached[1:]) / len(cached[1:])
    rounded = [[round(s, 2) for s in run] for run in (uncached, cached)]
    print(f"\n{name}: seconds per epoch, uncached {rounded[0]}, cached {rounded[1]}")
    print("| run | s/epoch | vs uncached frozen epoch |\n| --- | --- | --- |")
    print(f"| uncached frozen epoch (mean of epochs 2..{len(uncached)}) | {base:.2f} | 1.00x |")
    print(f"| cached: first epoch (builds the cache) | {cached[0]:.2f} | {cached[0] / base:.2f}x |")
    print(f"| cached: later frozen epochs (mean of 2..{len(cached)}) | {later:.3f} | {later / base:.3f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--sentences", type=int, default=8000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--baseline-epochs", type=int, default=2)
    parser.add_argument("--only", choices=["image", "text"], default=None)
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder with the real weights and data")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins, 2 epochs: checks the script")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.shared = _smoke.tiny_shared(Path(tmp) / "shared")
            args.images, args.sentences, args.max_length, args.epochs, args.baseline_epochs = 30, 32, 16, 2, 2
        cache_dir = str(Path(tmp) / "features")
        if args.only in (None, "image"):
            root = write_images(Path(tmp) / "images", args.images)
            uncached = image_run(args, root, False, args.baseline_epochs, cache_dir)
            report("EfficientNet-Lite0", uncached, image_run(args, root, True, args.epochs, cache_dir))
        if args.only in (None, "text"):
            uncached = text_run(args, False, args.baseline_epochs, cache_dir)
            report("MiniLM", uncached, text_run(args, True, args.epochs, cache_dir))


if __name__ == "__main__":
    main()
