"""Run a shipped recipe as shipped, with stand-ins only for what cannot be had here.

A recipe runs through ``lightning run`` (``cli.main``) from a sandbox folder laid out like the
repository (``recipes/`` and ``../shared`` linked), so its relative paths (``runs/...``,
``../shared/...``, ``recipes/lm/prompts.txt``) resolve as they do for a user. :func:`overrides`
derives the command-line changes; every key it may change is in :data:`ALLOWED` with the reason, and
a recipe that would need any other change fails the harness (:class:`NeedsMore`). Precision,
optimizer (fused or not), clipping, callbacks, schedulers, loggers (W&B offline), batch sizes,
workers and stages stay as shipped.

Stand-ins (:class:`StandIns`) are of the same family and architecture as the weights they replace,
randomly initialised, saved as local folders the way the Hub stores them: ``tiny`` configs in the
default suite, ``full`` size (``BertConfig()``, ``DistilBertConfig()``, ``GPT2Config()``, timm's
``resnet50``) in the slow one. The uncased WordPiece vocabulary is the real one (MiniLM's, in
``../shared``); GPT-2's byte-level BPE is trained here on Tiny Shakespeare (GPT-2's vocabulary
cannot be had offline), its model keeps GPT-2's 50,257 embeddings at full size.
"""

from __future__ import annotations

import glob
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Size = Literal["tiny", "full"]

#: Every recipe key the harness may change, and why; nothing else is changed.
ALLOWED: dict[str, str] = {
    "model.init_args.model_name_or_path": "pretrained timm/transformers weights (Hub or zoo) -> a stand-in",
    "data.init_args.root": "the user's image folder (a placeholder) -> a local image folder",
    "data.init_args.dataset": "a Hub dataset -> a local copy in the Hub's layout (configs, splits, labels)",
    "data.init_args.train_file": "the user's corpus text files (a placeholder) -> local text files",
    "data.init_args.val_file": "the user's corpus text files (a placeholder) -> local text files",
    "trainer.max_epochs": "size: 1 epoch, or up to the epoch FreezeUnfreeze unfreezes at (add-layers)",
    "trainer.limit_train_batches": "size: 2 training batches per epoch",
    "trainer.limit_val_batches": "size: 1 validation batch",
    "trainer.limit_test_batches": "size: 1 test batch",
    "trainer.limit_predict_batches": "size: 1 prediction batch",
    "trainer.accelerator": "a recipe that asks for GPUs runs on the CPU here",
    "trainer.devices": "a recipe that asks for several GPUs runs on one CPU process here",
}

LIMITS = {
    "limit_train_batches": 2,
    "limit_val_batches": 1,
    "limit_test_batches": 1,
    "limit_predict_batches": 1,
}
ZOO_TEXT = {"minilm-l6.sst2", "gpt2-mini.shakespeare"}


class NeedsMore(AssertionError):
    """A recipe needs a change the harness does not allow: fix the recipe, or name the hole in ALLOWED."""


def load(recipe: Path) -> dict[str, Any]:
    return yaml.safe_load(recipe.read_text())


@dataclass
class StandIns:
    """Stand-in weights and local data, built on first use under ``root`` (``size``: tiny or full)."""

    root: Path
    shared: Path
    size: Size = "tiny"
    built: dict[str, Path] = field(default_factory=dict)

    def _once(self, key: str, build) -> Path:
        if key not in self.built:
            folder = self.root / key
            if not folder.exists():
                build(folder)
            self.built[key] = folder
        return self.built[key]

    # -- weights -------------------------------------------------------------------------------------
    def timm(self, name: str, num_classes: int, label_names: list[str] | None = None) -> str:
        """``local-dir:`` folder of a random timm model: ``name``'s architecture at full size, a tiny
        architecture of the same kind (ResNet, EfficientNet) in the default suite."""
        import timm
        import torch
        from timm.models import save_for_hf

        arch = name.split(".")[0]
        if self.size == "tiny":
            arch = "test_efficientnet" if "efficientnet" in arch else "test_resnet"

        def build(folder: Path) -> None:
            torch.manual_seed(0)
            model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
            config = {"label_names": label_names} if label_names else None
            save_for_hf(model, str(folder), model_config=config, safe_serialization=True)

        return "local-dir:" + str(self._once(f"timm-{arch}-{num_classes}", build))

    def bert_tokenizer(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(self.shared / "models" / "all-MiniLM-L6-v2").save_pretrained(folder)

    def gpt2_tokenizer(self, folder: Path) -> int:
        from lightning_recipes.data.bpe import train_bpe_tokenizer

        text = (self.shared / "data" / "tinyshakespeare" / "input.txt").read_text()[:200_000]
        tokenizer = train_bpe_tokenizer(texts=[text], vocab_size=1000, output_dir=folder)
        return len(tokenizer)

    def transformers(self, name: str) -> str:
        """A folder like the Hub's ``name`` (model class, config kind, tokenizer kind), random weights."""
        import torch
        import transformers as tf

        kind = "gpt2" if "gpt2" in name else "distilbert" if "distilbert" in name else "bert"
        classifier = "finetuned-sst-2" in name or name == "minilm-l6.sst2"

        def build(folder: Path) -> None:
            torch.manual_seed(0)
            tiny = self.size == "tiny"
            if kind == "gpt2":
                vocab = self.gpt2_tokenizer(folder)
                small = {"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": vocab} if tiny else {}
                config = tf.GPT2Config(bos_token_id=0, eos_token_id=0, **small)
                tf.GPT2LMHeadModel(config).save_pretrained(folder)
                return
            self.bert_tokenizer(folder)
            names = ["negative", "positive"] if name == "minilm-l6.sst2" else ["NEGATIVE", "POSITIVE"]
            labels = {"id2label": dict(enumerate(names))} if classifier else {}
            if kind == "distilbert":
                small = {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64} if tiny else {}
                config = tf.DistilBertConfig(**small, **labels)
                cls = tf.DistilBertForSequenceClassification if classifier else tf.DistilBertForMaskedLM
            else:
                small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
                config = tf.BertConfig(**(small | {"intermediate_size": 64} if tiny else {}), **labels)
                cls = tf.BertForSequenceClassification if classifier else tf.BertForMaskedLM
            cls(config).save_pretrained(folder)

        return str(self._once(f"{kind}-{name}" if classifier else kind, build))

    # -- data ----------------------------------------------------------------------------------------
    def images(self, classes: list[str], split_folders: tuple[str, ...] = ("",)) -> str:
        """An image folder, ``[<split>/]<class>/<i>.png``: DTD textures at full size when 10 classes are
        asked for; else flat-colour images, a colour per class."""
        import numpy as np
        from PIL import Image

        def build(folder: Path) -> None:
            rng = np.random.default_rng(0)
            for split in split_folders:
                for c, name in enumerate(classes):
                    (folder / split / name).mkdir(parents=True, exist_ok=True)
                    for i in range(10):  # 10 a class: a stratified 10 % split has one of each
                        pixels = np.full((32, 32, 3), 20 * c, np.uint8) + rng.integers(
                            0, 30, (32, 32, 3), np.uint8
                        )
                        Image.fromarray(pixels).save(folder / split / name / f"{i}.png")

        key = f"images-{'-'.join(split_folders) or 'flat'}-{len(classes)}"
        if self.size == "full" and len(classes) == 10 and split_folders == ("",):
            dtd = self.shared / "data" / "dtd10" / "train"
            return str(self._once("dtd10-train", lambda f: shutil.copytree(dtd, f)))
        return str(self._once(key, build))

    def glue_sst2(self) -> str:
        """``nyu-mll/glue`` (config ``sst2``) as a local dataset folder in the Hub's layout: a README whose
        ``configs`` name the parquet files of each split; ``label`` a ClassLabel (negative, positive); the
        test split's labels hidden (-1), as on the Hub. Rows from ``../shared/data/sst2``."""
        import csv

        from datasets import ClassLabel, Dataset, Features, Value

        def build(folder: Path) -> None:
            features = Features(
                {
                    "sentence": Value("string"),
                    "label": ClassLabel(names=["negative", "positive"]),
                    "idx": Value("int32"),
                }
            )
            n = {"train": 256, "validation": 128, "test": 128} if self.size == "full" else {}
            for split, source in (("train", "train"), ("validation", "dev"), ("test", "dev")):
                with open(self.shared / "data" / "sst2" / f"{source}.tsv", newline="") as f:
                    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[: n.get(split, 64)]
                columns = {
                    "sentence": [r["sentence"] for r in rows],
                    "label": [int(r["label"]) if split != "test" else -1 for r in rows],
                    "idx": list(range(len(rows))),
                }
                (folder / "sst2").mkdir(parents=True, exist_ok=True)
                Dataset.from_dict(columns, features=features).to_parquet(
                    folder / "sst2" / f"{split}-00000-of-00001.parquet"
                )
            splits = "\n".join(
                f"  - split: {s}\n    path: sst2/{s}-*.parquet" for s in ("train", "validation", "test")
            )
            (folder / "README.md").write_text(
                f"---\nconfigs:\n- config_name: sst2\n  data_files:\n{splits}\n---\n"
            )

        return str(self._once("glue", build))

    def texts(self) -> str:
        """``*.txt`` files for a causal LM: Tiny Shakespeare cut in three files."""

        def build(folder: Path) -> None:
            text = (self.shared / "data" / "tinyshakespeare" / "input.txt").read_text()
            text = text[: 60_000 if self.size == "tiny" else 300_000]
            folder.mkdir(parents=True)
            third = len(text) // 3
            for i in range(3):
                (folder / f"part{i}.txt").write_text(text[i * third : (i + 1) * third])

        return str(self._once("texts", build)) + "/*.txt"


def exists(value: str, cwd: Path) -> bool:
    return bool(glob.glob(str(cwd / value)))


def is_hub_model(name: str, cwd: Path) -> bool:
    """A Hub id or a zoo name (``org/name``, ``resnet50.a1_in1k``), not a local folder or ``local-dir:``."""
    from lightning_recipes.registry import ZOO

    if name in ZOO:
        return True
    if name.startswith("local-dir:"):
        return not (cwd / name.removeprefix("local-dir:")).is_dir()
    return not (cwd / name).exists()


def unfreeze_epoch(config: dict[str, Any]) -> int | None:
    """The first epoch at which a recipe's FreezeUnfreeze trains part of the backbone, or ``None``."""
    from lightning_recipes.callbacks import FreezeUnfreeze

    for cb in config.get("trainer", {}).get("callbacks") or []:
        if cb["class_path"].endswith("FreezeUnfreeze"):
            freezer = FreezeUnfreeze(**(cb.get("init_args") or {}))
            return next(e for e in range(100) if freezer.target_stage(e, 1) > 0)
    return None


def overrides(recipe: Path, standins: StandIns, cwd: Path) -> dict[str, Any]:
    """``{key: value}``: the changes that run ``recipe`` here (only keys of :data:`ALLOWED`)."""
    from lightning_recipes.registry import ZOO

    config = load(recipe)
    model, data = config["model"]["init_args"], config["data"].get("init_args") or {}
    trainer = config.get("trainer") or {}
    kind = config["model"]["class_path"].rsplit(".", 1)[-1]
    tiny = standins.size == "tiny"
    changes: dict[str, Any] = {}

    # -- weights: Hub ids always; zoo names and ../shared weights only in the tiny suite (the slow one runs
    # them as shipped: the zoo builds them, ../shared has them)
    if kind == "ImageClassifier":
        name = model["model_name_or_path"]
        local = name.startswith("local-dir:") and not tiny
        if model.get("pretrained", True) and (tiny or is_hub_model(name, cwd)) and not local:
            digits = name in ZOO
            classes = 5 if digits else 1000  # the zoo's digits 0-4 head, or ImageNet's
            labels = [str(d) for d in range(5)] if digits else None
            changes["model.init_args.model_name_or_path"] = standins.timm(name, classes, labels)
    elif model.get("model_name_or_path"):
        name = model["model_name_or_path"]
        zoo_name = name in ZOO_TEXT
        if is_hub_model(name, cwd) and not zoo_name or (tiny and (zoo_name or "shared" in name)):
            if "shared" in name or name == "minilm-l6.sst2":
                changes["model.init_args.model_name_or_path"] = standins.transformers(
                    "minilm-l6.sst2" if name == "minilm-l6.sst2" else "bert-base-uncased"
                )
            else:
                changes["model.init_args.model_name_or_path"] = standins.transformers(name)

    # -- data: placeholders and Hub datasets -> local copies; files that exist stay
    if "root" in data and not exists(data["root"], cwd):
        class_map = model.get("class_map")
        if class_map:  # as-is: test/<class>/ folders named like the class map
            changes["data.init_args.root"] = standins.images(sorted(class_map), ("test",))
        else:
            n = model.get("num_classes") or 2
            changes["data.init_args.root"] = standins.images([f"class{i}" for i in range(n)])
    if data.get("dataset"):
        if data["dataset"] != "nyu-mll/glue" or data.get("dataset_config") != "sst2":
            raise NeedsMore(f"{recipe}: no local copy of the Hub dataset {data['dataset']!r} here")
        changes["data.init_args.dataset"] = standins.glue_sst2()
    corpus = config["data"]["class_path"].endswith("TextCorpusDataModule")
    for key in ("train_file", "val_file") if corpus else ():
        if data.get(key) and not exists(data[key], cwd):
            changes[f"data.init_args.{key}"] = standins.texts()
    for key in ("train_file", "val_file", "test_file", "predict_file"):
        if f"data.init_args.{key}" not in changes and data.get(key) and not exists(data[key], cwd):
            raise NeedsMore(
                f"{recipe}: data {key}={data[key]!r} is missing and the harness has no copy of it"
            )

    # -- size and device
    epoch = unfreeze_epoch(config)
    changes["trainer.max_epochs"] = 1 if epoch is None else epoch + 1
    changes.update({f"trainer.{k}": v for k, v in LIMITS.items()})
    if str(trainer.get("accelerator", "auto")) in ("gpu", "cuda") or trainer.get("devices", 1) not in (
        1,
        "auto",
    ):
        changes.update({"trainer.accelerator": "cpu", "trainer.devices": 1})

    outside = sorted(set(changes) - set(ALLOWED))
    if outside:
        raise NeedsMore(f"{recipe}: the harness would change {outside}, which ALLOWED does not list")
    return changes


def arguments(changes: dict[str, Any]) -> list[str]:
    return [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in changes.items()]


def sandbox(tmp_path: Path, repo: Path, shared: Path) -> Path:
    """``tmp_path/repo`` laid out like the checkout: ``recipes`` linked, ``../shared`` linked beside it."""
    work = tmp_path / "repo"
    work.mkdir()
    (work / "recipes").symlink_to(repo / "recipes")
    (tmp_path / "shared").symlink_to(shared)
    return work
