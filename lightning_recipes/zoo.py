"""Pretrained weights that lightning_recipes builds itself, offline, the first time they are asked for.

A zoo name is used like a timm name (``ImageClassifier(backbone="resnet10t.digits04")``). Where timm
would download weights, the zoo trains them once on data an installed package ships and caches
them under ``$LIGHTNING_RECIPES_CACHE/weights`` (default ``~/.cache/lightning_recipes``), so the
quickstart shows real transfer learning on a machine with no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_recipes.cache import default_cache_dir


@dataclass(frozen=True)
class DigitsWeights:
    """A timm architecture trained on a subset of scikit-learn's digits (the source task)."""

    arch: str
    digits: tuple[int, ...]
    epochs: int = 15
    seed: int = 0
    data_cfg: dict[str, Any] = field(
        default_factory=lambda: {
            "input_size": (3, 32, 32),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "num_classes": 0,
        }
    )

    def path(self) -> Path:
        name = f"{self.arch}.digits{''.join(map(str, self.digits))}.e{self.epochs}.s{self.seed}.safetensors"
        return default_cache_dir() / "weights" / name

    def resolve(self, pretrained: bool) -> tuple[str, dict[str, Any]]:
        """``(timm architecture, pretrained_cfg overlay)``; with ``pretrained`` it names the weights."""
        overlay = dict(self.data_cfg)
        if pretrained:
            overlay["file"] = str(self.build())
        return self.arch, overlay

    def build(self) -> Path:
        """Train the backbone on the source digits once and cache its weights; return their path."""
        path = self.path()
        if path.exists():
            return path
        import lightning as L
        from lightning.pytorch.utilities import rank_zero_info
        from safetensors.torch import save_file

        from lightning_recipes.data.digits import DigitsDataModule
        from lightning_recipes.modules.image import ImageClassifier

        rank_zero_info(
            f"lightning_recipes: training {self.arch} on digits {list(self.digits)} once for its pretrained "
            f"weights (cached at {path}; about 30 s on 2 CPU cores)"
        )
        L.seed_everything(self.seed, verbose=False)
        model = ImageClassifier(self.arch, num_classes=len(self.digits), pretrained=False, lr=2e-3)
        data = DigitsDataModule(digits=list(self.digits), data_config=self.data_cfg)
        trainer = L.Trainer(
            max_epochs=self.epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(model, datamodule=data)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(tmp))
        tmp.replace(path)
        return path


ZOO: dict[str, DigitsWeights] = {
    "resnet10t.digits04": DigitsWeights("resnet10t", (0, 1, 2, 3, 4)),
}
