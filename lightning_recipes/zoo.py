"""Pretrained weights that lightning_recipes builds itself, offline: ahead of time or on first use.

A zoo name is used like a timm name or a Hugging Face id (``ImageClassifier(backbone="resnet10t.digits04")``,
``CausalLM(model_name_or_path="gpt2-mini.shakespeare")``). Where timm or the Hub would download weights,
the zoo trains them once on real data (scikit-learn's bundled digits; Tiny Shakespeare, see
:mod:`lightning_recipes._zoo_lm` for where it is found) and caches them under
``$LIGHTNING_RECIPES_CACHE/weights`` (default ``~/.cache/lightning_recipes``), so the quickstart and the
offline recipes show real transfer learning on a machine with no network.

``lightning-recipes zoo list`` shows the zoo and what is cached; ``lightning-recipes zoo build NAME``
builds weights ahead of time. A build on first use (inside a run) leaves the run's random state as it
found it, so a run gives the same result on a cold and on a warm cache.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

# Re-exported: the zoo's builds (and their tests) use them from here.
from lightning_recipes._random_state import SEED_ENV_VARS as SEED_ENV_VARS
from lightning_recipes._random_state import build_trainer
from lightning_recipes._random_state import random_state_untouched as random_state_untouched
from lightning_recipes._zoo_lm import CorpusGPT2, gpt2_mini_shakespeare
from lightning_recipes._zoo_text import FinetunedTextClassifier, minilm_sst2
from lightning_recipes.cache import default_cache_dir
from lightning_recipes.modules._classification import ClassificationModule
from lightning_recipes.modules._heads import ClassificationHead


class _SourceClassifier(ClassificationModule):
    """The model a zoo entry trains on its source task: a timm backbone and a linear head.

    Built like ``ImageClassifier(arch, num_classes, pretrained=False, lr=lr)`` (backbone, then head,
    with the same arguments), so it draws the same random numbers and trains to the same weights.
    """

    def __init__(self, arch: str, num_classes: int, lr: float) -> None:
        super().__init__(num_classes=num_classes, lr=lr)
        import timm

        self.backbone = timm.create_model(
            arch, pretrained=False, num_classes=0, in_chans=3, pretrained_cfg_overlay=None
        )
        self.head = ClassificationHead(self.backbone.num_features, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))

    def logits_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        images, target = batch
        return self(images), target


@dataclass(frozen=True)
class DigitsWeights:
    """A timm architecture trained on a subset of scikit-learn's digits (the source task).

    The cached file holds the whole classifier in timm's own layout: the backbone and the trained
    head under the architecture's classifier name (``fc`` of a ResNet), and the overlay names its
    classes (``label_names``: the digits). A new head (``num_classes=0``) loads the backbone only;
    ``ImageClassifier(name, head="pretrained")`` uses the digits classifier as-is.
    """

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
        }
    )

    @property
    def label_names(self) -> list[str]:
        """The classes of the trained head: the source digits, in id order."""
        return [str(d) for d in self.digits]

    @property
    def trained_on(self) -> str:
        return f"digits {','.join(map(str, self.digits))} ({self.epochs} epochs)"

    def path(self) -> Path:
        digits = "".join(map(str, self.digits))
        name = f"{self.arch}.digits{digits}.e{self.epochs}.s{self.seed}.with_head.safetensors"
        return default_cache_dir() / "weights" / name

    def resolve(self, pretrained: bool) -> tuple[str, dict[str, Any]]:
        """``(timm architecture, pretrained_cfg overlay)``; with ``pretrained`` it names the weights."""
        from timm.models import get_pretrained_cfg_value

        overlay = {
            **self.data_cfg,
            "num_classes": len(self.digits),
            "classifier": get_pretrained_cfg_value(self.arch, "classifier"),
            "label_names": self.label_names,
        }
        if pretrained:
            overlay["file"] = str(self.build())
        return self.arch, overlay

    def build(self) -> Path:
        """Train the backbone and head on the source digits once and cache the weights; return their path.

        The caller's random state (generators and seed variables) is the same afterwards.
        """
        path = self.path()
        if path.exists():
            return path
        import lightning as L
        from lightning.pytorch.utilities import rank_zero_info
        from safetensors.torch import save_file

        from lightning_recipes.data.digits import DigitsDataModule

        rank_zero_info(
            f"lightning_recipes: training {self.arch} on digits {list(self.digits)} once for its pretrained "
            f"weights (cached at {path}; about 30 s on 2 CPU cores; your random state is left untouched; "
            "`lightning-recipes zoo build` does this ahead of time)"
        )
        with random_state_untouched():
            L.seed_everything(self.seed, verbose=False)
            model = _SourceClassifier(self.arch, num_classes=len(self.digits), lr=2e-3)
            data = DigitsDataModule(digits=list(self.digits), data_config=self.data_cfg)
            trainer = build_trainer(max_epochs=self.epochs)
            trainer.fit(model, datamodule=data)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        state = dict(model.backbone.state_dict())
        classifier = self.resolve(pretrained=False)[1]["classifier"]
        state.update({f"{classifier}.{k}": v for k, v in model.head[-1].state_dict().items()})
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        tmp.replace(path)
        return path


#: Zoo name -> entry. Every entry has ``arch`` and ``trained_on`` (for the listing), ``path()``, ``build()``
#: and ``resolve(pretrained)`` (what the loader needs: timm name and overlay, or a transformers folder).
ZOO: dict[str, DigitsWeights | FinetunedTextClassifier | CorpusGPT2] = {
    "resnet10t.digits04": DigitsWeights("resnet10t", (0, 1, 2, 3, 4)),
    "minilm-l6.sst2": minilm_sst2(),
    "gpt2-mini.shakespeare": gpt2_mini_shakespeare(),
}


def resolve_model_name(name: str | None) -> str | None:
    """A zoo name of a transformers model (``gpt2-mini.shakespeare``) becomes the folder of its weights and
    tokenizer, built on first use (see :mod:`lightning_recipes.zoo`); other names come back unchanged.

    Example::

        >>> resolve_model_name("gpt2"), resolve_model_name(None)
        ('gpt2', None)
    """
    entry = ZOO.get(name) if name is not None else None
    if entry is None:
        return name
    if getattr(entry, "library", "timm") != "transformers":
        raise ValueError(
            f"zoo name {name!r} is a timm backbone, not a transformers model: use it as "
            f"ImageClassifier(backbone={name!r}); `lightning-recipes zoo list` shows every zoo name"
        )
    return entry.resolve(pretrained=True)


USAGE = """usage:
  lightning-recipes zoo list                  name, architecture, source task, cached or not, path
  lightning-recipes zoo build NAME [NAME...]  train and cache these weights now (not on first use)
"""


def main(argv: list[str]) -> int:
    """``lightning-recipes zoo list|build NAME [NAME...]``; returns the exit code (2: bad usage or name)."""
    command, names = (argv[0], argv[1:]) if argv else ("", [])
    if command == "list" and not names:
        rows = [("name", "arch", "trained on", "cached", "path")] + [
            (name, w.arch, w.trained_on, "yes" if w.path().exists() else "no", str(w.path()))
            for name, w in ZOO.items()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for *cells, path in rows:
            print("  ".join([*(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)), path]))
        return 0
    if command == "build" and names:
        unknown = [name for name in names if name not in ZOO]
        for name in unknown:
            close = difflib.get_close_matches(name, list(ZOO), n=3, cutoff=0.5)
            hint = f"did you mean: {', '.join(close)}?" if close else f"known: {', '.join(ZOO)}"
            print(f"error: unknown zoo name {name!r}; {hint} (`lightning-recipes zoo list`)", file=sys.stderr)
        if unknown:
            return 2
        for name in dict.fromkeys(names):
            weights = ZOO[name]
            if weights.path().exists():
                print(f"{name}: already cached at {weights.path()}")
            else:
                print(f"{name}: built {weights.build()}")
        return 0
    if command in ("-h", "--help"):
        print(USAGE)
        return 0
    print(f"error: unknown zoo command {' '.join(['zoo', *argv])!r}\n{USAGE}", file=sys.stderr)
    return 2
