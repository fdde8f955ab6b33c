"""DigitsDataModule: scikit-learn's handwritten digits as an image folder, for offline quickstarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lightning_recipes.cache import default_cache_dir
from lightning_recipes.data.image import ImageDataModule


def export_digits(
    root: Path, digits: list[int], train_per_class: int | None = None, seed: int = 0, image_size: int = 32
) -> Path:
    """Write scikit-learn's 1,797 8x8 digits as ``root/<name>/{train,val,test}/<digit>/<i>.png``.

    The split is fixed (seeded, stratified: 60 % train, 15 % val, 25 % test) so every subset of
    digits shares it; ``train_per_class`` keeps only that many training images per digit, for
    few-shot transfer. Returns the folder, which is written once and reused.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    name = f"digits{''.join(map(str, digits))}_n{train_per_class or 'all'}_s{seed}_px{image_size}"
    folder = root / name
    if (folder / ".complete").exists():
        return folder
    data = load_digits()
    images, labels = data.images, data.target
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=0.25, random_state=seed, stratify=labels)
    train, val = train_test_split(rest, test_size=0.2, random_state=seed, stratify=labels[rest])
    rng = np.random.default_rng(seed)
    for split, ids in (("train", train), ("val", val), ("test", test)):
        for digit in digits:
            chosen = ids[labels[ids] == digit]
            if split == "train" and train_per_class is not None:
                chosen = rng.choice(chosen, size=min(train_per_class, len(chosen)), replace=False)
            out = folder / split / str(digit)
            out.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (images[i] * (255.0 / 16.0)).astype(np.uint8)
                Image.fromarray(pixels, mode="L").resize((image_size, image_size), Image.BILINEAR).save(
                    out / f"{i}.png"
                )
    (folder / ".complete").touch()
    return folder


class DigitsDataModule(ImageDataModule):
    """scikit-learn's handwritten digits (shipped with scikit-learn: no download), as 32x32 PNGs.

    ``digits`` picks the classes, so one backbone can be trained on ``[0, 1, 2, 3, 4]`` and
    transferred to ``[5, 6, 7, 8, 9]``. Class ids follow the order of ``digits``.

    Args:
        digits: which digits (0-9) to use.
        train_per_class: cap on training images per digit (few-shot); ``None`` keeps all (~108).
        root: cache folder for the PNGs (default ``$LIGHTNING_RECIPES_CACHE/digits``).
        seed: seed of the fixed train/val/test split.
        **kwargs: ``ImageDataModule`` options (``batch_size``, ``num_workers``, ``augment``...).

    Example::

        >>> import tempfile
        >>> dm = DigitsDataModule(digits=[5, 6], root=tempfile.mkdtemp(), num_workers=0)
        >>> dm.setup("fit")
        >>> dm.label_names, len(dm.train_set) > 100
        (['5', '6'], True)
    """

    def __init__(
        self,
        digits: list[int] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # noqa: B006 (a YAML default; never mutated)
        train_per_class: int | None = None,
        root: str | None = None,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = True,
        train_transform: dict[str, Any] | None = None,
        data_config: dict[str, Any] | None = None,
        image_size: int | None = None,
    ) -> None:
        if not digits or not set(digits) <= set(range(10)) or len(set(digits)) != len(digits):
            raise ValueError(f"digits must be distinct integers in 0..9, got {digits}")
        self.digits = list(digits)
        self.train_per_class = train_per_class
        self.cache = Path(root) if root else default_cache_dir() / "digits"
        super().__init__(
            root=str(self.cache / "pending"),
            label_names=[str(d) for d in digits],
            seed=seed,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            # Digits must not be flipped; small shifts and scale changes are safe.
            train_transform=train_transform or {"hflip": 0.0, "scale": (0.8, 1.0), "ratio": (0.9, 1.1)},
            data_config=data_config,
            image_size=image_size,
        )

    def prepare_data(self) -> None:
        export_digits(self.cache, self.digits, self.train_per_class, self.seed)

    def _rows(self) -> dict[str, list[tuple[Path, list[str]]] | None]:
        self.root = str(export_digits(self.cache, self.digits, self.train_per_class, self.seed))
        return super()._rows()
