"""Reading a text split from a local file, and the length-grouped sampler of the text data module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
}


def load_split_file(path: str, split: str, cache_dir: str) -> Any:
    """One split from a local file; the loader follows the extension."""
    from datasets import load_dataset

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{split} file {path!r} does not exist")
    builder = BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise ValueError(f"{split} file {path!r}: unsupported extension; use one of {sorted(BUILDERS)}")
    if file.stat().st_size == 0:
        raise ValueError(f"{split} file {path!r} is empty")
    kwargs: dict[str, Any] = {"delimiter": "\t", "quoting": 3} if file.suffix.lower() == ".tsv" else {}
    try:
        ds = load_dataset(
            builder, data_files={split: str(file.resolve())}, split=split, cache_dir=cache_dir, **kwargs
        )
    except ValueError as exc:  # datasets: 'Instruction "train" corresponds to no data!'
        raise ValueError(f"{split} file {path!r} has no rows (a header only?)") from exc
    if len(ds) == 0:
        raise ValueError(f"{split} file {path!r} has no rows (a header only?)")
    return ds


def length_grouped_sampler(batch_size: int, lengths: list[int], seed: int) -> Any:
    """transformers' ``LengthGroupedSampler`` drawing a new, seeded order each epoch.

    Seeding by ``seed + epoch`` (not the global RNG) gives every DDP rank the same order, which
    Lightning's ``DistributedSamplerWrapper`` then shards. The epoch is the Trainer's: Lightning calls
    ``set_epoch`` before each epoch (and forwards it through its DDP wrapper), so a run resumed at
    epoch N draws epoch N's order; used without Lightning, each iteration moves to the next epoch.
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def set_epoch(self, epoch: int) -> None:
            self.epoch, self.epoch_given = epoch, True

        def __iter__(self) -> Any:
            self.generator = torch.Generator().manual_seed(seed + self.epoch)
            if not self.epoch_given:
                self.epoch += 1
            self.epoch_given = False
            return super().__iter__()

    sampler = EpochSeededLengthGroupedSampler(batch_size, lengths=lengths)
    sampler.epoch, sampler.epoch_given = 0, False
    return sampler
