"""ImageClassifier(tta=...): averaged probabilities of flips and crops at validate, test and predict."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import ImageClassifier
from lightning_recipes.callbacks import FreezeUnfreeze


def tiny(**kwargs) -> ImageClassifier:
    kwargs.setdefault("num_classes", 3)
    torch.manual_seed(0)
    return ImageClassifier("test_resnet", pretrained=False, **kwargs).eval()


def test_flip_tta_is_the_mean_softmax_of_the_plain_and_flipped_batch():
    model, images = tiny(tta="flip"), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        by_hand = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2
        plain = model(images).softmax(-1)
        probabilities = model.predict_step([images, {"path": list("abcd")}], 0)["probabilities"]
        logits = model.evaluation_logits(images)
    torch.testing.assert_close(probabilities, by_hand)
    torch.testing.assert_close(logits.softmax(-1), by_hand)
    assert not torch.allclose(by_hand, plain, atol=1e-4)  # the flip changed something


def test_validation_and_test_use_the_averaged_probabilities_and_training_does_not():
    model, images, target = tiny(tta="flip"), torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        by_hand = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2
        out = model.validation_step([images, target], 0)
        torch.testing.assert_close(out["preds"], by_hand)
        torch.testing.assert_close(out["loss"], F.nll_loss(by_hand.log(), target))
        model.train()  # BatchNorm on the batch's statistics: the same for both calls
        logits, _ = model.logits_and_target([images, target])
        torch.testing.assert_close(logits, model(images))  # one forward pass: no TTA in training


def test_five_and_ten_crop_average_the_resized_corner_and_centre_crops():
    model, images = tiny(tta="ten_crop", tta_crop_fraction=0.75), torch.randn(2, 3, 32, 32)
    starts = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]  # torchvision's five_crop order: corners, centre

    def crops(x):
        return [
            F.interpolate(x[..., i : i + 24, j : j + 24], size=(32, 32), mode="bilinear", antialias=True)
            for i, j in starts
        ]

    with torch.no_grad():
        views = crops(images) + crops(images.flip(-1))
        ten = torch.stack([model(v).softmax(-1) for v in views]).mean(0)
        five = torch.stack([model(v).softmax(-1) for v in views[:5]]).mean(0)
        torch.testing.assert_close(model.evaluation_logits(images).softmax(-1), ten, atol=1e-5, rtol=1e-4)
        model.tta = "five_crop"
        torch.testing.assert_close(model.evaluation_logits(images).softmax(-1), five, atol=1e-5, rtol=1e-4)


def test_multilabel_tta_averages_sigmoids():
    model, images = tiny(task="multilabel", tta="flip"), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        by_hand = (model(images).sigmoid() + model(images.flip(-1)).sigmoid()) / 2
        torch.testing.assert_close(model.evaluation_logits(images).sigmoid(), by_hand)


def test_tta_is_off_by_default_kept_in_checkpoints_and_checked(tmp_path):
    images = torch.randn(2, 3, 32, 32)
    model = tiny()
    assert model.tta is None
    torch.testing.assert_close(model.evaluation_logits(images), model(images))
    with pytest.raises(ValueError, match=r"tta='flips' is not one of \('flip', 'five_crop', 'ten_crop'\)"):
        tiny(tta="flips")
    with pytest.raises(ValueError, match=r"tta_crop_fraction must be in \(0, 1\], got 1.5"):
        tiny(tta="five_crop", tta_crop_fraction=1.5)
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=0, enable_progress_bar=False)
    trainer.strategy.connect(tiny(tta="five_crop"))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert (loaded.tta, loaded.tta_crop_fraction) == ("five_crop", 0.875)
    assert ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt", tta=None).tta is None


def test_feature_cache_refuses_tta(tmp_path):
    x = torch.randn(8, 3, 16, 16)
    data = DataLoader(TensorDataset(x, torch.randint(0, 3, (8,))), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[FreezeUnfreeze(unfreeze_at_epoch=None, cache_features=True)],
        default_root_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match="tta='flip'.*set model tta: null for the fit"):
        trainer.fit(tiny(tta="flip"), data, data)
