"""The zoo's names: what each one is and where its built weights are. The core's half of the zoo.

A zoo name is used like a timm name or a Hugging Face id (``ImageClassifier("resnet10t.digits04")``,
``CausalLM(model_name_or_path="gpt2-mini.shakespeare")``): where timm or the Hub would download weights,
the zoo has trained them once, offline, on real data, into ``$LIGHTNING_RECIPES_CACHE/weights``
(default ``~/.cache/lightning_recipes``). This module only finds them: it imports nothing but the
standard library, and never trains, downloads or looks for a project folder. A name that is not built
yet is a :class:`ZooNotBuiltError` saying how to build it. Building is the application's
(:mod:`lightning_recipes.zoo`): ``lightning-recipes zoo build NAME``, and ``lightning run`` builds the
zoo names a recipe uses before the run.

Each entry's fields are its whole recipe: the cached name holds them (``test_resnet.digits01.e1.s0...``)
or a hash of them, so changed settings never reuse old weights.

Example::

    >>> digits = ZOO["resnet10t.digits04"]
    >>> digits.arch, digits.label_names, digits.path().name
    ('resnet10t', ['0', '1', '2', '3', '4'], 'resnet10t.digits01234.e15.s0.with_head.safetensors')
    >>> built("no-such.name")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    KeyError: "'no-such.name' is not a zoo name (known: resnet10t.digits04, minilm-l6.sst2, ...)"
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lightning_recipes.cache import default_cache_dir

TINY_SHAKESPEARE = "data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


class ZooNotBuiltError(FileNotFoundError):
    """A zoo name whose weights are not built on this machine yet; the message says how to build them."""


def _digest(entry: Any) -> str:
    """The first 10 hex digits of the SHA-256 of an entry's settings (its cached folder's suffix)."""
    return hashlib.sha256(repr(sorted(asdict(entry).items())).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class DigitsWeights:
    """A timm architecture trained on a subset of scikit-learn's digits (the source task).

    The built file holds the whole classifier in timm's layout: the backbone and the trained head under
    the architecture's classifier name (``fc`` of a ResNet); :meth:`overlay` names its classes (the
    digits). ``ImageClassifier(name)`` loads the backbone under a new head; ``head="pretrained"`` uses
    the digits classifier as-is.
    """

    #: What loads the built file.
    library: ClassVar[str] = "timm"
    #: What the build costs, for the line that announces it.
    build_time: ClassVar[str] = "about 30 s on 2 CPU cores"
    #: Files of the project's shared folder the build reads (none: scikit-learn ships the digits).
    sources: ClassVar[tuple[str, ...]] = ()

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

    def is_built(self) -> bool:
        return self.path().is_file()

    def overlay(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg_overlay`` of the built weights, less the ``file``: data config, number
        and names of the classes, and the classifier (looked up in timm's registry, imported here)."""
        from timm.models import get_pretrained_cfg_value

        return {
            **self.data_cfg,
            "num_classes": len(self.digits),
            "classifier": get_pretrained_cfg_value(self.arch, "classifier"),
            "label_names": self.label_names,
        }


@dataclass(frozen=True)
class TextClassifierWeights:
    """A transformers encoder fine-tuned with its own sequence-classification head on a labelled tsv
    (``sentence<TAB>label``), saved as a transformers folder with ``id2label``: what a Hub user gets from
    ``distilbert-base-uncased-finetuned-sst-2-english``. ``TextClassifier(name, head="pretrained")`` and
    ``AutoModelForSequenceClassification.from_pretrained(folder)`` load it.

    ``encoder`` and ``train_file`` are paths in the project's shared folder (the build's ``source``).
    """

    library: ClassVar[str] = "transformers"
    build_time: ClassVar[str] = "a few minutes on 2 CPU cores"
    name: str
    encoder: str
    train_file: str
    labels: tuple[str, ...]  # not ``label_names``: field names are hashed into the cached name
    train_size: int = 2000
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 64
    seed: int = 0

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.encoder, self.train_file)

    @property
    def arch(self) -> str:
        return f"{Path(self.encoder).name} + classifier"

    @property
    def trained_on(self) -> str:
        return f"{self.train_file} ({self.train_size} sentences, {self.epochs} epoch)"

    def path(self) -> Path:
        return default_cache_dir() / "weights" / f"{self.name}.{_digest(self)}"

    def is_built(self) -> bool:
        return (self.path() / "config.json").is_file()


@dataclass(frozen=True)
class GPT2Weights:
    """A GPT-2 (``GPT2Config``) and its byte-level BPE tokenizer, both trained on one text (``source``, a
    path in the project's shared folder, checked against ``source_sha256``), saved as a transformers
    folder: ``CausalLM(model_name_or_path=name)`` and ``AutoModelForCausalLM.from_pretrained(folder)``
    load it.
    """

    library: ClassVar[str] = "transformers"
    build_time: ClassVar[str] = "about 2 min on 2 CPU cores"
    name: str
    source: str
    source_url: str
    source_sha256: str | None
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 256
    vocab_size: int = 2048
    block_size: int = 128
    batch_size: int = 32
    steps: int = 300
    lr: float = 3e-3
    seed: int = 0

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,)

    @property
    def arch(self) -> str:
        return f"gpt2 {self.n_layer}x{self.n_embd}, ctx {self.n_positions}, vocab {self.vocab_size}"

    @property
    def trained_on(self) -> str:
        return f"{self.source} ({self.steps} x {self.batch_size} x {self.block_size} tokens)"

    def path(self) -> Path:
        return default_cache_dir() / "weights" / f"{self.name}.{_digest(self)}"

    def is_built(self) -> bool:
        return self.path().is_dir()


ZooEntry = DigitsWeights | TextClassifierWeights | GPT2Weights


def gpt2_mini_shakespeare(**settings: Any) -> GPT2Weights:
    """``gpt2-mini.shakespeare``: 4 layers x 128 wide (1.1 M parameters), pretrained on Tiny Shakespeare
    (1.1 MB, 40,000 lines): 300 steps x 32 x 128 = 1.2 M tokens, about 3 passes over its ~390 k tokens.
    ``settings`` override fields (tests build smaller ones)."""
    return GPT2Weights(
        name="gpt2-mini.shakespeare",
        source=TINY_SHAKESPEARE,
        source_url=TINY_SHAKESPEARE_URL,
        source_sha256=TINY_SHAKESPEARE_SHA256,
        **settings,
    )


def minilm_sst2() -> TextClassifierWeights:
    """``minilm-l6.sst2``: all-MiniLM-L6-v2 fine-tuned on 2,000 SST-2 training sentences."""
    return TextClassifierWeights(
        "minilm-l6.sst2",
        encoder="models/all-MiniLM-L6-v2",
        train_file="data/sst2/train.tsv",
        labels=("negative", "positive"),
    )


#: Zoo name -> entry: ``arch``, ``trained_on``, ``library`` (what loads it), ``sources`` (the shared files
#: its build reads), ``path()`` and ``is_built()``.
ZOO: dict[str, ZooEntry] = {
    "resnet10t.digits04": DigitsWeights("resnet10t", (0, 1, 2, 3, 4)),
    "minilm-l6.sst2": minilm_sst2(),
    "gpt2-mini.shakespeare": gpt2_mini_shakespeare(),
}


def entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``, or ``KeyError`` naming the known ones."""
    if name not in ZOO:
        raise KeyError(f"{name!r} is not a zoo name (known: {', '.join(ZOO)})")
    return ZOO[name]


def built(name: str) -> Path:
    """The built weights of zoo name ``name`` (a file or a folder), or :class:`ZooNotBuiltError` saying how
    to build them. Looks in the cache only: never builds."""
    found = entry(name)
    if found.is_built():
        return found.path()
    needs = (
        f"; it reads {', '.join(found.sources)} from the project's shared folder: give it with "
        "`--source DIR` or $LIGHTNING_RECIPES_SHARED"
        if found.sources
        else ""
    )
    raise ZooNotBuiltError(
        f"zoo model {name!r} ({found.arch}, trained on {found.trained_on}) is not built on this machine "
        f"(no {found.path()}). Build it once with `lightning-recipes zoo build {name}` ({found.build_time}"
        f"{needs}); `lightning run` builds the zoo models a recipe names before the run"
    )
