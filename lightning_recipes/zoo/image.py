"""Building the zoo's image backbones: ``ImageClassifier`` trained on ``DigitsDataModule`` by a Trainer."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lightning_recipes._random_state import random_state_untouched
from lightning_recipes.data.digits import DigitsDataModule
from lightning_recipes.handshake import connect
from lightning_recipes.modules.image import ImageClassifier
from lightning_recipes.registry import DigitsWeights
from lightning_recipes.zoo._build import build_trainer, publish, unfinished_path

#: The learning rate of the source task (the head's and the backbone's).
SOURCE_LR = 2e-3


def source_model(entry: DigitsWeights) -> ImageClassifier:
    """The model a :class:`~lightning_recipes.registry.DigitsWeights` entry trains on its source task: the
    architecture with random weights and a new head, one class per digit.

    Example::

        >>> from lightning_recipes.registry import DigitsWeights
        >>> model = source_model(DigitsWeights("test_resnet", (0, 1)))
        >>> model.num_classes, model.lr
        (2, 0.002)
    """
    return ImageClassifier(entry.arch, pretrained=False, num_classes=len(entry.digits), lr=SOURCE_LR)


def build_digits(entry: DigitsWeights) -> Path:
    """Train ``entry.arch`` on its digits for ``entry.epochs`` (seeded) and save it to ``entry.path()``:
    the backbone's weights and the trained head under the architecture's classifier name, in one
    safetensors file. The caller's random state (generators and seed variables) is the same afterwards.
    """
    from safetensors.torch import save_file

    path = entry.path()
    with random_state_untouched():
        L.seed_everything(entry.seed, verbose=False)
        model = source_model(entry)
        data = DigitsDataModule(digits=list(entry.digits), data_config=dict(entry.data_cfg))
        connect(model, data)
        build_trainer(max_epochs=entry.epochs).fit(model, datamodule=data)
    state = dict(model.backbone.state_dict())
    classifier = entry.overlay()["classifier"]
    state.update({f"{classifier}.{k}": v for k, v in model.head[-1].state_dict().items()})
    unfinished = unfinished_path(path)
    save_file({k: v.contiguous() for k, v in state.items()}, str(unfinished))
    publish(unfinished, path)
    return path
