"""The zoo's language models: a small GPT-2 and its byte-level BPE tokenizer, pretrained once on a text.

No installed dependency ships a prose corpus (the largest text files in a typical environment are timm's
ImageNet synset lists), so the source text is a file looked up where the project keeps its real data
(``$LIGHTNING_RECIPES_SHARED``, ``../shared``) and in the cache; where it is absent the build fails with
the file's name, its download URL and where to put it. Its SHA-256 is checked, so the same weights come
out on every machine that builds them (with the same library versions).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from lightning_recipes.cache import default_cache_dir, shared_candidates

TINY_SHAKESPEARE = "data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def source_candidates(relative: str) -> list[Path]:
    """Where a source text ``relative`` to a shared-data folder is looked for, in order.

    ``$LIGHTNING_RECIPES_SHARED``, ``../shared`` of the working directory and of the source checkout
    (a clone of the repository has its data beside it), then the cache (``$LIGHTNING_RECIPES_CACHE``).

    Example::

        >>> source_candidates("data/x.txt")[-1] == default_cache_dir() / "data/x.txt"
        True
    """
    return [*shared_candidates(relative), default_cache_dir() / relative]


@dataclass(frozen=True)
class CorpusGPT2:
    """A GPT-2 (``GPT2Config``) with a byte-level BPE tokenizer, both trained on one text (the source task).

    :meth:`build` trains the tokenizer on the text, then the model from random weights for ``steps``
    optimizer steps of ``batch_size`` x ``block_size`` tokens (AdamW, warm-up then cosine decay), and
    saves both as a transformers folder (``save_pretrained``), which :meth:`resolve` returns:
    ``CausalLM(model_name_or_path=<zoo name>)`` and ``AutoModelForCausalLM.from_pretrained(folder)``
    load it. The folder name holds a hash of every setting, so changed settings never reuse old weights.
    """

    #: What loads the built folder (``zoo.resolve_model_name`` accepts these entries).
    library: ClassVar[str] = "transformers"

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
    def arch(self) -> str:
        return f"gpt2 {self.n_layer}x{self.n_embd}, ctx {self.n_positions}, vocab {self.vocab_size}"

    @property
    def trained_on(self) -> str:
        return f"{self.source} ({self.steps} x {self.batch_size} x {self.block_size} tokens)"

    def path(self) -> Path:
        digest = hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:10]
        return default_cache_dir() / "weights" / f"{self.name}.{digest}"

    def resolve(self, pretrained: bool = True) -> str:
        """The folder of the model and tokenizer, built on first use (``pretrained=False`` is not offered:
        a GPT-2 from random weights is ``CausalLM(config=...)``)."""
        if not pretrained:
            raise ValueError(
                f"{self.name!r} names pretrained weights; for random weights give CausalLM a config instead"
            )
        return str(self.build())

    def source_file(self) -> Path:
        """The source text: the first of :func:`source_candidates` that exists, with its SHA-256 checked."""
        candidates = source_candidates(self.source)
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"zoo model {self.name!r} is pretrained on {self.source}, which is not on this machine "
                f"(looked for {', '.join(str(p) for p in candidates)}). Download it (public domain) to the "
                f"cache: `curl -L --create-dirs -o {candidates[-1]} {self.source_url}`, or set "
                "LIGHTNING_RECIPES_SHARED to a folder that holds it"
            )
        if self.source_sha256 is not None:
            digest = hashlib.sha256(found.read_bytes()).hexdigest()
            if digest != self.source_sha256:
                raise ValueError(
                    f"{found} is not the text zoo model {self.name!r} is trained on: its SHA-256 is "
                    f"{digest}, expected {self.source_sha256} (the file at {self.source_url})"
                )
        return found

    def build(self) -> Path:
        """Train the tokenizer and the model once and cache them; return the folder.

        The caller's random state (generators and seed variables) is the same afterwards.
        """
        path = self.path()
        if path.is_dir():
            return path
        import lightning as L
        from lightning.pytorch.utilities import rank_zero_info

        from lightning_recipes._random_state import build_trainer, random_state_untouched
        from lightning_recipes.data.bpe import train_bpe_tokenizer
        from lightning_recipes.data.corpus import TextCorpusDataModule

        text = self.source_file()
        rank_zero_info(
            f"lightning_recipes: pretraining {self.name} ({self.arch}) on {text} once (cached at {path}; "
            "about 2 min on 2 CPU cores; your random state is left untouched; `lightning-recipes zoo build` "
            "does this ahead of time)"
        )
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            with random_state_untouched():
                L.seed_everything(self.seed, verbose=False)
                tokenizer = train_bpe_tokenizer([text], vocab_size=self.vocab_size, output_dir=partial)
                shape = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
                config = {
                    **{k: getattr(self, k) for k in shape},
                    **{k: 0.0 for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")},  # few steps: no dropout
                    **dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), tokenizer.eos_token_id),
                }
                lm = _pretraining_module(config, lr=self.lr, steps=self.steps)
                data = TextCorpusDataModule(
                    str(text),
                    tokenizer=str(partial),
                    block_size=self.block_size,
                    batch_size=self.batch_size,
                    val_fraction=0.0,
                    seed=self.seed,
                )
                trainer = build_trainer(max_steps=self.steps, gradient_clip_val=1.0)
                trainer.fit(lm, datamodule=data)
            lm.model.save_pretrained(partial)
            tokenizer.save_pretrained(str(partial))
        except BaseException:  # no half-built folder left behind
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _publish(partial, path)
        return path


def _pretraining_module(config: dict[str, Any], lr: float, steps: int) -> Any:
    """The LightningModule that pretrains a zoo GPT-2 (see :class:`CorpusGPT2`)."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig, AutoModelForCausalLM

    from lightning_recipes.schedulers import WarmupDecay

    class Pretraining(L.LightningModule):
        """A GPT-2 from random weights and the next-token loss ``CausalLM`` uses (token-mean cross-entropy),
        AdamW (weight decay 0.01) with warm-up and cosine decay. Not ``CausalLM`` itself: the zoo is
        imported by the modules that resolve zoo names, and must not import them back."""

        def __init__(self) -> None:
            super().__init__()
            self.model = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **config))
            for cfg in (self.model.config, self.model.generation_config):
                cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (config[k] for k in (
                    "bos_token_id", "eos_token_id", "pad_token_id"))  # fmt: skip

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            ids = batch["input_ids"]
            logits = self.model(input_ids=ids).logits
            targets = ids[:, 1:]  # the same arithmetic as CausalLM.token_nll, so the same weights
            total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="sum")
            return total / torch.tensor(targets.numel()).clamp(min=1)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
            schedule = WarmupDecay(optimizer, warmup_ratio=0.05, decay="cosine", total_steps=steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    return Pretraining()


def _publish(partial: Path, path: Path) -> None:
    """Rename the finished folder into place; a concurrent build that got there first wins."""
    try:
        partial.replace(path)
    except OSError:
        if not path.is_dir():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def gpt2_mini_shakespeare(**settings: Any) -> CorpusGPT2:
    """The zoo's ``gpt2-mini.shakespeare``: 4 layers x 128 wide (1.1 M parameters), pretrained on Tiny
    Shakespeare (1.1 MB, 40,000 lines): 300 steps x 32 x 128 = 1.2 M tokens, about 3 passes over its
    ~390 k tokens. ``settings`` override fields (tests build smaller ones)."""
    return CorpusGPT2(
        name="gpt2-mini.shakespeare",
        source=TINY_SHAKESPEARE,
        source_url=TINY_SHAKESPEARE_URL,
        source_sha256=TINY_SHAKESPEARE_SHA256,
        **settings,
    )
