"""Gradient clipping with a ``fused=True`` optimizer under mixed precision (the shipped BERT recipes).

Lightning's ``MixedPrecision`` refuses to clip for an optimizer that unscales in its own step, bf16
included; the modules clip it themselves (``_compat.unscale_fused_for_clipping``/``clip_unchecked``).
These tests check that the result is the clipping an unfused optimizer gets: same norms, same weights.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "callbacks"))
from test_gradient_monitor import NormLog, PostClip  # noqa: E402
from test_gradient_monitor_amp import BERT, batches  # noqa: E402

from lightning_recipes import TextClassifier  # noqa: E402
from lightning_recipes.callbacks import GradientMonitor  # noqa: E402


def fp16() -> MixedPrecision:
    """Lightning's ``16-mixed`` plugin on CPU: a GPU run's scaler and hooks (see its tests)."""
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))


def train(tmp_path: Path, fused: bool, precision, algorithm: str, limit: float):
    torch.manual_seed(0)
    model = TextClassifier(
        "bert",
        pretrained=False,
        config=BERT,
        num_classes=2,
        lr=0.05,
        optimizer=partial(torch.optim.AdamW, weight_decay=0.01, fused=fused),
    )
    monitor, post = GradientMonitor(), PostClip()
    log = NormLog(monitor)
    precision_args = (
        {"plugins": [precision]} if isinstance(precision, MixedPrecision) else {"precision": precision}
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        gradient_clip_val=limit,
        gradient_clip_algorithm=algorithm,
        callbacks=[monitor, log, post],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **precision_args,
    )
    trainer.fit(model, batches(6))
    return model, log, post


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_lightning_still_refuses_to_clip_a_fused_optimizer_under_mixed_precision(precision):
    """The reason the modules clip themselves: if this fails, Lightning clips fused optimizers now and
    ``_compat.unscale_fused_for_clipping``/``clip_unchecked`` can go."""
    plugin = MixedPrecision(
        precision, "cpu", scaler=torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    )
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], fused=True)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        plugin.clip_gradients(optimizer, 1.0)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16"])
def test_fused_optimizer_is_clipped_like_an_unfused_one(tmp_path, precision, algorithm):
    limit = 0.05 if algorithm == "norm" else 0.002
    runs = {}
    for fused in (False, True):
        plugin = fp16() if precision == "fp16" else precision
        runs[fused] = train(tmp_path / str(fused), fused, plugin, algorithm, limit)
    (plain, _, plain_post), (fused, fused_log, fused_post) = runs[False], runs[True]
    assert len(fused_post.norms) == len(plain_post.norms) >= 5  # every step ran (fp16 may skip the first)
    if algorithm == "norm":
        assert max(fused_post.norms) <= limit * (1 + 1e-4)
        assert any(n > limit for n in fused_log.norms), "the test clips for real"
    else:
        assert max(fused_post.max_abs) <= limit * (1 + 1e-6)
    # the clipped gradients the fused step used are the unfused run's, and so are the weights it made
    # up to the fused kernel's float error (2.6e-4 on torch 2.5; each step moves a weight by lr = 0.05), the
    # attention key biases aside: softmax cancels them, their gradient is float noise that Adam normalises
    # into steps of the full LR
    # The first step's norms are the same to float precision; later ones drift with the weights, since one
    # step's float error in the weights gives the next gradient its own: up to 1.4e-4 relative by step 6
    # under fp16, and one weight of 512 in 1.2e-3 (2.4 % of a step), on an AMD EPYC with torch 2.14. A
    # clipping that went wrong is off by far more: a missed unscale by the scale (2 ** 10), a missed
    # clip by the limit's ratio.
    assert fused_post.norms[0] == pytest.approx(plain_post.norms[0], rel=1e-6)
    assert fused_post.norms == pytest.approx(plain_post.norms, rel=5e-4)
    for (name, a), b in zip(plain.state_dict().items(), fused.state_dict().values(), strict=True):
        if not name.endswith("key.bias"):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=2.5e-3, msg=name)  # < 5 % of one step
