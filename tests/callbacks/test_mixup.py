"""Mixup: timm's mixing on a fixed seed, the soft-target loss, metrics on real labels, the refusals, YAML."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from timm.data import Mixup as TimmMixup
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import ImageClassifier, TextClassifier
from lightning_recipes.callbacks import FreezeUnfreeze, Mixup
from lightning_recipes.cli import main
from lightning_recipes.handshake import CachedFeatures, MixedTargets

NO_TRAINER = SimpleNamespace(callbacks=[])


def tiny(**kwargs) -> ImageClassifier:
    kwargs.setdefault("num_classes", 3)
    return ImageClassifier("test_resnet", pretrained=False, **kwargs)


def ready(callback: Mixup, model, trainer=NO_TRAINER) -> Mixup:
    callback.setup(trainer, model, "fit")
    return callback


def trainer(tmp_path, callbacks, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        **kwargs,
    )


@pytest.mark.parametrize(
    "options",
    [
        {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mode": "batch"},
        {"mixup_alpha": 0.4, "cutmix_alpha": 0.0, "mode": "elem"},
        {"mixup_alpha": 0.0, "cutmix_alpha": 1.0, "mode": "pair", "prob": 0.7},
        {"mixup_alpha": 0.8, "cutmix_minmax": [0.2, 0.8], "switch_prob": 1.0},
    ],
)
def test_mixing_reproduces_timm_on_a_fixed_seed(options):
    callback = ready(Mixup(**options), tiny(label_smoothing=0.1))
    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 2, 1, 0])
    given = images.clone()
    reference = TimmMixup(**{"mixup_alpha": 0.8, **options}, label_smoothing=0.1, num_classes=3)
    for seed in range(3):
        np.random.seed(seed)
        mixed, targets = callback.mix(images, labels)
        np.random.seed(seed)
        want_images, want_targets = reference(images.clone(), labels)
        torch.testing.assert_close(mixed, want_images, rtol=0, atol=0)
        torch.testing.assert_close(targets.probabilities, want_targets)
        assert torch.equal(targets.labels, labels)
    assert torch.equal(images, given)  # the loader's tensor is left as it was
    np.random.seed(0)
    mixed, targets = callback.mix(images, labels)
    assert not torch.equal(mixed, images)  # a Beta draw of 1.0 exactly has probability zero
    torch.testing.assert_close(targets.probabilities.sum(1), torch.ones(6))


def test_odd_batch_leaves_the_last_image_unmixed_with_smoothed_targets():
    callback = ready(Mixup(mixup_alpha=1.0, cutmix_alpha=0.0), tiny(label_smoothing=0.3))
    images, labels = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    np.random.seed(1)
    mixed, targets = callback.mix(images, labels)
    assert torch.equal(mixed[4], images[4]) and not torch.equal(mixed[:4], images[:4])
    torch.testing.assert_close(targets.probabilities[4], torch.tensor([0.1, 0.8, 0.1]))
    single_mixed, single = callback.mix(images[:1], labels[:1])
    assert torch.equal(single_mixed, images[:1])
    torch.testing.assert_close(single.probabilities, torch.tensor([[0.8, 0.1, 0.1]]))


def test_soft_target_loss_is_timms_and_reduces_to_the_hard_loss():
    model = tiny()
    logits, soft = torch.randn(4, 3), torch.rand(4, 3).softmax(-1)
    torch.testing.assert_close(model.soft_target_loss(logits, soft), SoftTargetCrossEntropy()(logits, soft))
    hard = torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(
        model.soft_target_loss(logits, F.one_hot(hard, 3).float()), model.loss(logits, hard)
    )
    smooth = tiny(label_smoothing=0.1)
    smoothed = F.one_hot(hard, 3).float() * 0.9 + 0.1 / 3  # timm's mixup_target at lam 1
    torch.testing.assert_close(smooth.soft_target_loss(logits, smoothed), smooth.loss(logits, hard))
    weighted = tiny(class_weights=[1.0, 2.0, 0.5])
    expected = -(soft * torch.tensor([1.0, 2.0, 0.5]) * logits.log_softmax(-1)).sum(1).mean()
    torch.testing.assert_close(weighted.soft_target_loss(logits, soft), expected)
    with pytest.raises(ValueError, match=r"soft targets of shape \(4, 2\).*num_classes=3"):
        model.soft_target_loss(logits, soft[:, :2])


def test_training_step_trains_on_the_mix_and_measures_the_real_labels():
    torch.manual_seed(0)
    model, callback = tiny(), Mixup(mixup_alpha=1.0, cutmix_alpha=1.0)
    ready(callback, model)
    batch = [torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])]
    labels = batch[1]
    np.random.seed(3)
    callback.on_train_batch_start(NO_TRAINER, model, batch, 0)
    assert isinstance(batch[1], MixedTargets) and torch.equal(batch[1].labels, labels)
    with torch.no_grad():
        logits = model(batch[0])
        loss = model.training_step(batch, 0)
    torch.testing.assert_close(loss, SoftTargetCrossEntropy()(logits, batch[1].probabilities))
    accuracy = (logits.argmax(1) == labels).float().mean()
    torch.testing.assert_close(model.train_metrics.compute()["train/acc"], accuracy)


def test_validation_during_a_mixup_fit_sees_plain_images_and_real_labels(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(24, 3, 32, 32)
    data = TensorDataset(x, (x.mean((1, 2, 3)) > 0).long() + (x[:, 0].mean((1, 2)) > 0).long())
    train, val = DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=8)
    model = tiny(lr=0.05)
    fitted = trainer(tmp_path, [Mixup()], limit_train_batches=2)
    fitted.fit(model, train, val)
    during = {k: float(v) for k, v in fitted.callback_metrics.items() if k.startswith("val/")}
    (after,) = trainer(tmp_path, []).validate(model, val, verbose=False)
    assert during == pytest.approx(after, abs=1e-6) and set(during) >= {"val/acc", "val/loss"}


def test_cached_features_are_mixed_as_features_with_cache_views():
    model, cache = tiny(), SimpleNamespace(callbacks=[FreezeUnfreeze(cache_features=True, cache_views=2)])
    callback = ready(Mixup(mixup_alpha=1.0, cutmix_alpha=0.0), model, cache)
    features, labels = torch.randn(4, 96), torch.tensor([0, 1, 2, 1])
    batch = CachedFeatures(features, labels)
    np.random.seed(0)
    callback.on_train_batch_start(NO_TRAINER, model, batch, 0)
    np.random.seed(0)
    want, _ = TimmMixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=3)(
        features.clone(), labels
    )
    torch.testing.assert_close(batch.features, want)
    assert isinstance(batch.target, MixedTargets) and not torch.equal(batch.features, features)


class OwnLoss(ImageClassifier):
    def loss(self, logits, target):
        return F.cross_entropy(logits, target) * 2


def test_refusals_name_the_problem_and_the_fix(tmp_path, tiny_bert):
    for options, match in [
        ({"prob": 1.5}, r"prob=1.5 is not a probability: give a value in \[0, 1\]"),
        ({"switch_prob": -0.1}, r"switch_prob=-0.1 is not a probability"),
        ({"mixup_alpha": -1.0}, "alphas must be >= 0"),
        ({"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, "mixes nothing"),
        ({"cutmix_minmax": [0.8, 0.2]}, r"0 < min < max <= 1"),
        ({"mode": "rows"}, "mode='rows' is not one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            Mixup(**options)
    models = [
        (tiny(task="multilabel"), "task is 'multilabel'.*not supported"),
        (tiny(task="regression", num_classes=1), "task is 'regression'"),
        (TextClassifier(str(tiny_bert), num_classes=2), "inputs are not images.*label_smoothing alone"),
        (
            OwnLoss("test_resnet", pretrained=False, num_classes=3),
            r"overrides loss\(\) but not soft_target_loss",
        ),
        (L.LightningModule(), "needs a classifier with soft_target_loss"),
    ]
    for model, match in models:
        with pytest.raises(ValueError, match=match):
            ready(Mixup(), model)
    plain_cache = SimpleNamespace(callbacks=[FreezeUnfreeze(cache_features=True)])
    with pytest.raises(ValueError, match="no cache_views.*not mixup of images.*cache_features: false"):
        ready(Mixup(cutmix_alpha=0.0), tiny(), plain_cache)
    views_cache = SimpleNamespace(callbacks=[FreezeUnfreeze(cache_features=True, cache_views=2)])
    with pytest.raises(ValueError, match="CutMix cuts boxes out of images.*set cutmix_alpha: 0"):
        ready(Mixup(), tiny(), views_cache)
    with pytest.raises(ValueError, match=r"one class id per example.*already mixed"):
        ready(Mixup(), tiny()).mix(torch.randn(2, 3, 8, 8), torch.rand(2, 3))


def test_a_refused_fit_stops_before_the_first_step(tmp_path):
    model = tiny(task="multilabel")
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8, 3))
    with pytest.raises(ValueError, match="Mixup mixes one-class labels"):
        trainer(tmp_path, [Mixup()]).fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_recipe_with_mixup_label_smoothing_and_tta_runs_through_the_cli(tiny_recipe, capsys):
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["trainer"]["callbacks"].append(
        {
            "class_path": "lightning_recipes.callbacks.Mixup",
            "init_args": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0},
        }
    )
    recipe["model"]["init_args"].update({"label_smoothing": 0.1, "tta": "flip"})
    tiny_recipe.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tiny_recipe), "--trainer.max_epochs=1"]) == 0
    assert "test/acc=" in capsys.readouterr().out
    assert main(["run", str(tiny_recipe), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    (mixup,) = [c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("Mixup")]
    assert mixup["init_args"]["cutmix_alpha"] == 1.0 and printed["model"]["init_args"]["tta"] == "flip"
