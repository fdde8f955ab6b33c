"""FreezeUnfreeze(cache_features=True): exactness vs the uncached path, when the cache is used and dropped,
augmentation, storage (memory, memory-mapped files, reuse, rebuild), resume, DDP and bad input."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from tiny_text_models import make_model
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_recipes import ImageClassifier, TextClassifier, TextDataModule, connect
from lightning_recipes.callbacks import FreezeUnfreeze
from lightning_recipes.callbacks._feature_cache import FeatureCache
from lightning_recipes.handshake import CachedFeatures


class Record(L.Callback):
    """Per training batch: the loss and whether the batch was cached features."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.cached: list[bool] = []
        self.val_cached: list[bool] = []
        self.stores: list[list[tuple[int, bool, int]]] = []  # per epoch: (views, memory-mapped, examples)
        self.features: list[np.ndarray] = []

    def on_train_epoch_end(self, trainer, pl_module):
        (callback,) = [c for c in trainer.callbacks if isinstance(c, FreezeUnfreeze)]
        stores = callback.feature_cache.stores.values() if callback.feature_cache else []
        self.stores.append(sorted((s.views, s.memory_mapped, len(s)) for s in stores))
        self.features = [np.array(s.features) for s in stores]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.cached.append(isinstance(batch, CachedFeatures))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_cached.append(isinstance(batch, CachedFeatures))


def images(n: int = 24, seed: int = 0) -> TensorDataset:
    x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def fit(tmp_path: Path, model, train, val=None, epochs: int = 3, ckpt_in=None, ckpt_out=None, **cb):
    record = Record()
    callback = FreezeUnfreeze(**{"unfreeze_at_epoch": None, "cache_dir": str(tmp_path / "fc"), **cb})
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[callback, record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, train, val, ckpt_path=ckpt_in)
    if ckpt_out:
        trainer.save_checkpoint(ckpt_out)
    return record, callback, trainer


def image_run(tmp_path, cache: bool, dataset=None, epochs: int = 3, **kwargs):
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr=0.05, dropout=0.2)
    data = dataset or images()
    train = DataLoader(data, batch_size=8, shuffle=True)
    val = DataLoader(images(16, seed=1), batch_size=8)
    return (model, *fit(tmp_path, model, train, val, epochs=epochs, cache_features=cache, **kwargs))


def assert_same_run(a, b, atol=1e-5):
    (model_a, rec_a, *_), (model_b, rec_b, *_) = a, b
    assert len(rec_a.losses) == len(rec_b.losses)
    np.testing.assert_allclose(rec_a.losses, rec_b.losses, atol=atol, rtol=0)
    for (name, p), q in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        if p.is_floating_point():
            torch.testing.assert_close(p, q, atol=atol, rtol=0, msg=name)


def test_image_cached_frozen_epochs_match_uncached_path_and_cache_drops_at_unfreeze(tmp_path):
    uncached = image_run(tmp_path / "a", cache=False, epochs=4, unfreeze_at_epoch=3)
    cached = image_run(tmp_path / "b", cache=True, epochs=4, unfreeze_at_epoch=3)
    assert_same_run(uncached, cached)
    # 3 batches per epoch: the first (building) epoch reads the data, the next frozen ones the cache,
    # the unfrozen one the data again; validation reads the cache in every frozen epoch.
    assert cached[1].cached == [False] * 3 + [True] * 6 + [False] * 3
    assert cached[1].val_cached == [True, True] * 3 + [False, False] and not any(uncached[1].val_cached)
    assert cached[1].stores == [[(1, False, 16), (1, False, 24)]] * 3 + [[]]  # in memory, then dropped
    cache = cached[2].feature_cache
    assert uncached[2].feature_cache is None and not cache.active and not cache.stores
    assert torch.is_tensor(cached[3].train_dataloader.dataset.tensors[0])  # the original loader is back


def test_text_cached_frozen_epochs_match_uncached_path(tmp_path):
    folder = make_model(tmp_path / "tiny-bert")
    rows = ["good film,pos", "great fun,pos", "bad film,neg", "awful dull movie,neg"] * 6
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    runs = []
    for cache in (False, True):
        torch.manual_seed(0)
        config = {**__import__("transformers").AutoConfig.from_pretrained(folder).to_dict(), **no_dropout}
        model = TextClassifier(str(folder), num_classes=2, config=config, lr=0.01, pooling="mean")
        data = TextDataModule(
            train_file=str(tmp_path / "train.csv"), text_column="text", val_fraction=0.25, batch_size=6,
            cache_dir=str(tmp_path / "hf"),
        )  # fmt: skip
        connect(model, data)
        runs.append((model, *fit(tmp_path / str(cache), model, data, cache_features=cache)))
    assert_same_run(*runs)
    assert runs[1][1].cached == [False] * 3 + [True] * 6


def test_backbone_dropout_is_refused(tmp_path):
    folder = make_model(tmp_path / "tiny-bert")  # BERT's default config: dropout 0.1
    model = TextClassifier(str(folder), num_classes=2)
    x = {"input_ids": torch.randint(5, 20, (8, 5))}
    message = r"dropout or drop-path active: \['embeddings.dropout'.*hidden_dropout"
    with pytest.raises(ValueError, match=message):
        FeatureCache().setup(SimpleNamespace(strategy=L.pytorch.strategies.SingleDeviceStrategy()), model)
    assert model(x).shape == (8, 2)


class Noisy(Dataset):
    """Random-augmented items: each load adds fresh noise."""

    def __init__(self) -> None:
        self.base = images(16)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + 0.1 * torch.randn_like(x), y


@pytest.mark.slow
def test_augmented_data_needs_cache_views(tmp_path):
    with pytest.raises(ValueError, match="training data is augmented.*cache_views: k"):
        image_run(tmp_path / "a", cache=True, dataset=Noisy())
    _, record, *_ = image_run(tmp_path / "b", cache=True, dataset=Noisy(), cache_views=3)
    assert record.cached == [False] * 2 + [True] * 4
    assert record.stores[-1] == [(1, False, 16), (3, False, 16)]  # validation: 1 view; training: 3
    views = next(f for f in record.features if f.shape[0] == 3)
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[1], views[2])
    _, again, *_ = image_run(tmp_path / "c", cache=True, dataset=Noisy(), cache_views=3)
    assert np.array_equal(next(f for f in again.features if f.shape[0] == 3), views)  # seeded
    with pytest.raises(ValueError, match="cache_views must be >= 1"):
        FeatureCache(views=0)
    with pytest.raises(ValueError, match="cache_views=2 needs cache_features=True"):
        FreezeUnfreeze(cache_views=2)


def test_files_over_budget_are_memory_mapped_reused_and_rebuilt_on_key_change(tmp_path):
    first = image_run(tmp_path, cache=True, cache_memory_mb=0)
    cache = first[2].feature_cache
    folders = sorted(p.name for p in (tmp_path / "fc").iterdir())
    assert len(cache.built) == 2 and sorted(cache.built) == folders  # train and validation
    assert first[1].stores[-1] == [(1, True, 16), (1, True, 24)]  # memory-mapped
    files = {p.name for p in (tmp_path / "fc" / folders[0]).iterdir()}
    assert files == {"features.npy", "targets.npy", "meta.json"}
    features = np.load(tmp_path / "fc" / cache.built[0] / "features.npy")
    assert features.shape == (1, 24, 96)  # views, examples, test_resnet's pooled width

    second = image_run(tmp_path, cache=True, cache_memory_mb=0)  # same weights and data: reused
    assert second[2].feature_cache.built == []
    assert_same_run(first, second, atol=0)

    third = image_run(tmp_path, cache=True, cache_memory_mb=0, dataset=images(seed=5))  # other data
    assert len(third[2].feature_cache.built) == 1  # the train split is rebuilt, validation reused
    assert len(list((tmp_path / "fc").iterdir())) == 3


def test_the_cache_says_when_it_builds_where_and_when_it_serves(tmp_path, caplog):
    caplog.set_level("INFO", logger="lightning.pytorch.utilities.rank_zero")
    image_run(tmp_path, cache=True, cache_memory_mb=0, epochs=2)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FreezeUnfreeze")]
    assert said[:2] == [
        "FreezeUnfreeze: computing the frozen backbone's features of 24 training examples, once",
        said[1],
    ] and re.fullmatch(
        r"FreezeUnfreeze: features of 24 training examples computed in [\d.]+ s \([\d.]+ MB\)", said[1]
    )
    folder = tmp_path / "fc"
    served = [m for m in said if "batches are cached" in m]
    assert len(served) == 2  # training and validation, once each
    assert served[0].startswith(
        "FreezeUnfreeze: the frozen epochs' training batches are cached backbone features "
        f"(24 examples, memory-mapped from {folder}"
    )
    caplog.clear()
    image_run(tmp_path, cache=True, cache_memory_mb=0, epochs=1)  # the same weights and data: reused
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FreezeUnfreeze")]
    assert (
        not any("computing" in m for m in said) and sum("reusing cached features in" in m for m in said) == 2
    )


def test_data_fingerprints_follow_files_transforms_and_tokenisation(tmp_path):
    from PIL import Image
    from torchvision.transforms import Resize

    from lightning_recipes.callbacks._feature_store import data_fingerprint
    from lightning_recipes.data.image import ImageDataset

    for i in range(3):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    samples = [(tmp_path / f"{i}.png", i % 2) for i in range(3)]
    base = data_fingerprint(ImageDataset(samples, Resize(4)))
    assert base == data_fingerprint(ImageDataset(samples, Resize(4)))
    assert base != data_fingerprint(ImageDataset(samples, Resize(6)))  # another transform
    assert base != data_fingerprint(ImageDataset(samples[:2], Resize(4)))  # other files
    Image.new("RGB", (9, 8)).save(tmp_path / "2.png")  # a changed file
    assert base != data_fingerprint(ImageDataset(samples, Resize(4)))

    folder = make_model(tmp_path / "tiny-bert")
    (tmp_path / "train.csv").write_text("text,label\ngood film,pos\nbad film,neg\n")
    prints = []
    for max_length in (8, 8, 3):
        data = TextDataModule(
            train_file=str(tmp_path / "train.csv"), text_column="text", tokenizer=str(folder),
            max_length=max_length, cache_dir=str(tmp_path / "hf"),
        )  # fmt: skip
        data.setup("fit")
        prints.append(data_fingerprint(data.train_set))
    assert prints[0] == prints[1] != prints[2]


@pytest.mark.slow
def test_resume_in_frozen_phase_continues_exactly(tmp_path):
    def run(folder, epochs, **kwargs):
        torch.manual_seed(0)
        model = ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr=0.05)
        train = DataLoader(images(), batch_size=8)
        return model, *fit(folder, model, train, epochs=epochs, cache_features=True, **kwargs)

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2, ckpt_out=tmp_path / "frozen.ckpt")
    resumed = run(tmp_path / "resumed", 4, ckpt_in=str(tmp_path / "frozen.ckpt"))
    for (name, a), b in zip(full[0].state_dict().items(), resumed[0].state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed[1].cached == [False] * 3 + [True] * 3  # rebuilt at the resumed epoch, served after
    np.testing.assert_array_equal(full[1].losses[6:], resumed[1].losses)


def test_modules_and_strategies_the_cache_cannot_serve(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
    with pytest.raises(ValueError, match="not FSDPStrategy.*cache_features: false"):
        FeatureCache().setup(SimpleNamespace(strategy=FSDPStrategy()), model)
    plain = L.LightningModule()
    plain.backbone = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"LightningModule lacks \['head'\]"):
        FeatureCache().setup(SimpleNamespace(strategy=SingleDeviceStrategy()), plain)
    with pytest.raises(ValueError, match="train_bn=True keeps BatchNorm"):
        image_run(tmp_path / "bn", cache=True, train_bn=True)

    class Stochastic(ImageClassifier):  # stochastic without a dropout module: found by running a batch twice
        def features_and_target(self, batch):
            features, target = super().features_and_target(batch)
            return features + 0.1 * torch.rand_like(features), target

    noisy = Stochastic("test_resnet", num_classes=2, pretrained=False)
    with pytest.raises(ValueError, match=r"changes from one pass.*\['the first batch gave two outputs'\]"):
        fit(tmp_path / "noisy", noisy, DataLoader(images(8), batch_size=4), cache_features=True)

    folder = make_model(tmp_path / "tiny-bert")
    config = {**__import__("transformers").AutoConfig.from_pretrained(folder).to_dict()}
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    own_head = TextClassifier(str(folder), num_classes=2, head="pretrained", config=config)
    own_head.head.dropout.p = 0.0
    batch = {"input_ids": torch.randint(5, 20, (4, 5)), "labels": torch.zeros(4, dtype=torch.long)}
    with pytest.raises(ValueError, match="head='pretrained'.*use head='new'"):
        own_head.features_and_target(batch)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import lightning as L
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from lightning_recipes import ImageClassifier
    from lightning_recipes.callbacks import FreezeUnfreeze

    out = Path(sys.argv[1])
    cached = sys.argv[2] == "1"

    class Dump(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            state = {k: v.detach().clone() for k, v in pl_module.named_parameters()}
            tag = f"{int(cached)}_rank{trainer.global_rank}_epoch{trainer.current_epoch}"
            torch.save(state, out / f"{tag}.pt")
            cache = trainer.callbacks[0].feature_cache
            if cache is not None:
                for key, store in cache.stores.items():
                    np.save(out / f"features_rank{trainer.global_rank}_{key}.npy", store.features)

    if __name__ == "__main__":
        L.seed_everything(0)
        x = torch.randn(30, 3, 16, 16)
        y = (x.mean((1, 2, 3)) > 0).long()
        model = ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr=0.05)
        trainer = L.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, num_sanity_val_steps=0,
            callbacks=[FreezeUnfreeze(unfreeze_at_epoch=None, cache_features=cached,
                                      cache_dir=str(out / "fc")), Dump()],
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=str(out),
        )
        data = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
        trainer.fit(model, data, DataLoader(TensorDataset(x[:10], y[:10]), batch_size=4))
    """
)


@pytest.mark.slow
def test_ddp_ranks_cache_their_shards_and_stay_bitwise_identical(tmp_path, run_script):
    """Two CPU processes (gloo): the gathered cache and the head are the same on both ranks, and match
    the uncached DDP run."""
    for cached in ("0", "1"):
        run_script(DDP_SCRIPT, tmp_path, cached)
    for epoch in range(3):
        states = {
            (c, r): torch.load(tmp_path / f"{c}_rank{r}_epoch{epoch}.pt") for c in (0, 1) for r in (0, 1)
        }
        for name, value in states[(1, 0)].items():
            assert torch.equal(value, states[(1, 1)][name]), f"{name} differs between ranks at {epoch}"
            torch.testing.assert_close(value, states[(0, 0)][name], atol=1e-5, rtol=0)
    ranks = [sorted(tmp_path.glob(f"features_rank{r}_*.npy")) for r in (0, 1)]
    assert len(ranks[0]) == 2 and [p.name[15:] for p in ranks[0]] == [p.name[15:] for p in ranks[1]]
    for a, b in zip(*ranks, strict=True):
        assert np.array_equal(np.load(a), np.load(b))
    assert {np.load(p).shape[1] for p in ranks[0]} == {30, 10}  # every example, not one rank's share
