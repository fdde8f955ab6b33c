"""FreezeUnfreeze under DDP (2 CPU processes): ranks stay in sync across the unfreeze and a resume."""

from __future__ import annotations

import textwrap

import pytest
import torch

DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from lightning_recipes import ImageClassifier
    from lightning_recipes.callbacks import FreezeUnfreeze

    out = Path(sys.argv[1])

    class Dump(L.Callback):
        def _dump(self, trainer, pl_module, tag):
            state = {k: v.detach().clone() for k, v in pl_module.named_parameters()}
            torch.save(state, out / f"rank{trainer.global_rank}_{tag}.pt")

        def on_train_start(self, trainer, pl_module):
            self._dump(trainer, pl_module, "start")

        def on_train_epoch_end(self, trainer, pl_module):
            self._dump(trainer, pl_module, f"epoch{trainer.current_epoch}")

    if __name__ == "__main__":
        L.seed_everything(0)
        x = torch.randn(32, 3, 16, 16)
        y = (x.mean((1, 2, 3)) > 0).long()
        data = DataLoader(TensorDataset(x, y), batch_size=4)
        model = ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr=0.05)
        max_epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
        ckpt_path = sys.argv[3] if len(sys.argv) > 3 else None
        trainer = L.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_epochs=max_epochs, limit_train_batches=2,
            callbacks=[FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.5), Dump()],
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=str(out),
        )
        trainer.fit(model, data, ckpt_path=ckpt_path)
        trainer.save_checkpoint(out / "last.ckpt")
    """
)


@pytest.mark.slow
def test_ddp_ranks_hold_identical_weights_after_unfreeze(tmp_path, run_script):
    """Two CPU processes (gloo): unfrozen backbone gradients are all-reduced, so ranks never diverge."""
    run_script(DDP_SCRIPT, tmp_path)
    states = {
        (rank, tag): torch.load(tmp_path / f"rank{rank}_{tag}.pt")
        for rank in (0, 1)
        for tag in ("start", "epoch0", "epoch1", "epoch2")
    }
    for tag in ("start", "epoch0", "epoch1", "epoch2"):
        for name, value in states[(0, tag)].items():
            assert torch.equal(value, states[(1, tag)][name]), f"{name} differs between ranks at {tag}"
    backbone = [k for k in states[(0, "start")] if k.startswith("backbone.")]
    head = [k for k in states[(0, "start")] if k.startswith("head.")]
    # Frozen epoch 0: backbone untouched, head trained; epochs 1 and 2: the backbone moves.
    assert all(torch.equal(states[(0, "start")][k], states[(0, "epoch0")][k]) for k in backbone)
    assert any(not torch.equal(states[(0, "start")][k], states[(0, "epoch0")][k]) for k in head)
    for before, after in (("epoch0", "epoch1"), ("epoch1", "epoch2")):
        assert any(not torch.equal(states[(0, before)][k], states[(0, after)][k]) for k in backbone)


@pytest.mark.slow
def test_ddp_resume_after_unfreeze_matches_uninterrupted_run(tmp_path, run_script):
    """Stop after the unfreeze epoch, resume under DDP: same weights as a run that never stopped."""
    for name, *args in (("full", 3), ("part", 2), ("resumed", 3, tmp_path / "part" / "last.ckpt")):
        (tmp_path / name).mkdir()
        run_script(DDP_SCRIPT, tmp_path / name, *args, cwd=tmp_path / name)
    for rank in (0, 1):
        full = torch.load(tmp_path / "full" / f"rank{rank}_epoch2.pt")
        resumed = torch.load(tmp_path / "resumed" / f"rank{rank}_epoch2.pt")
        for name, value in full.items():
            assert torch.equal(value, resumed[name]), f"rank {rank}: {name}"
    assert not (tmp_path / "resumed" / "rank0_epoch1.pt").exists()  # it really resumed at epoch 2
