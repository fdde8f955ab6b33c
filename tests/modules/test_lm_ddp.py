"""CausalLM perplexity under DDP (slow: two CPU processes, gloo): the value of the whole validation set."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from spawned_ddp import SpawnedDDP
from torch.utils.data import DataLoader, Dataset

from lightning_recipes import CausalLM


class Uneven(Dataset):
    """Item ``i`` has ``2 + i`` real tokens of 12: ranks (even/odd items) see different token counts."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 64, (12,), generator=torch.Generator().manual_seed(i))
        mask = (torch.arange(12) < 2 + i).long()
        return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.slow
def test_val_perplexity_is_the_same_on_two_processes_as_on_one(tmp_path) -> None:
    torch.manual_seed(0)
    lm = CausalLM(config={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 16, "vocab_size": 64})
    common = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "default_root_dir": str(tmp_path),
    }
    loader = DataLoader(Uneven(), batch_size=2)
    (single,) = L.Trainer(devices=1, **common).validate(lm, loader, verbose=False)
    (ddp,) = L.Trainer(devices=2, strategy=SpawnedDDP(), **common).validate(lm, loader, verbose=False)
    assert ddp["val/ppl"] == pytest.approx(single["val/ppl"], rel=1e-5)
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=1e-5)
