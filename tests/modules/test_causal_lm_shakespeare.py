"""From scratch on real text (slow): a small GPT-2 on Tiny Shakespeare must beat its untrained self by far."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_recipes import CausalLM, TextCorpusDataModule, connect


@pytest.mark.slow
def test_small_gpt2_from_scratch_on_tinyshakespeare(shared_dir: Path, tmp_path: Path) -> None:
    source = shared_dir / "data" / "tinyshakespeare" / "input.txt"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    text = tmp_path / "shakespeare_300k.txt"
    text.write_text(source.read_text()[:300_000])  # the first ~27 % of the corpus keeps this to ~2 minutes
    L.seed_everything(0)
    data = TextCorpusDataModule(
        str(text),
        bpe_vocab_size=512,
        tokenizer_dir=str(tmp_path / "tokenizer"),
        block_size=64,
        batch_size=16,  # 16 x 64 = 1,024 tokens/step
        val_fraction=0.1,
        num_workers=0,
        cache_dir=str(tmp_path / "cache"),
    )
    config = {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 128, "vocab_size": 512}
    lm = CausalLM(config={**config, "bos_token_id": 0, "eos_token_id": 0}, lr=3e-3)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=300,  # 300 x 1,024 = ~307 k tokens: ~2 epochs of the ~150 k-token slice
        check_val_every_n_epoch=None,
        val_check_interval=300,
        limit_val_batches=10,  # 10 x 16 blocks = 10 k validation tokens
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    connect(lm, data)  # the corpus's BPE tokenizer goes to the model from scratch
    (untrained,) = trainer.validate(lm, datamodule=data, verbose=False)
    trainer.fit(lm, datamodule=data)
    (trained,) = trainer.validate(lm, datamodule=data, verbose=False)
    samples = lm.generate(["ROMEO:", "First Citizen:\n"], max_new_tokens=60, do_sample=True, top_k=40, seed=0)
    print(f"\nval/ppl untrained {untrained['val/ppl']:.1f} -> trained {trained['val/ppl']:.1f}")
    for sample in samples:
        print("-" * 40 + "\n" + sample)
    assert untrained["val/ppl"] > 300  # about the vocabulary size: an untrained model guesses uniformly
    assert trained["val/ppl"] < untrained["val/ppl"] / 5
    assert all(len(s) > len("First Citizen:\n") + 20 for s in samples)
    assert torch.isfinite(torch.tensor(trained["val/loss"]))
