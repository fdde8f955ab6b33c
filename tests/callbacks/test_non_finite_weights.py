"""NonFiniteGuard: NaN/inf weights (parameters or buffers) stop the run after the step that made them."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from non_finite_models import INF, NAN, Poisoned, checkpoint, finite_files, fit, poison

from lightning_recipes.callbacks import TrainingDiverged, _finite, non_finite_guard


@pytest.mark.parametrize(
    ("target", "value"),
    [("head.weight", NAN), ("backbone.0.bias", INF), ("head.bias", -INF), ("backbone.1.running_var", INF)],
)
def test_non_finite_weights_stop_the_run_after_the_step_that_made_them(tmp_path, target, value):
    """Step 2 (epoch 1, first batch) leaves one NaN/inf in a parameter or a buffer: the run stops there,
    before the next batch, the validation and any checkpoint (also one saving every step)."""
    model, mc = Poisoned(at=2, target=target, value=value), checkpoint(tmp_path)
    steps = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}"
    )
    with pytest.raises(TrainingDiverged) as info:
        fit(tmp_path, model, [mc, steps])
    err = info.value
    assert (err.epoch, err.step, err.weights_finite) == (1, 3, False)
    assert err.what == f"the weights are not finite after the optimizer step (1 of 8 tensors: {target})"
    assert model.batches["train"] == [(0, 0), (0, 1), (1, 0)] and model.batches["val"] == [(0, 0)]
    files = finite_files(tmp_path / "ckpt")
    assert files == {"best-epoch=0.ckpt": True, "last.ckpt": True, "step=1.ckpt": True, "step=2.ckpt": True}
    assert err.last_finite_checkpoint in {str(tmp_path / "ckpt" / name) for name in files}


def test_weights_are_checked_once_per_optimizer_step_under_gradient_accumulation(tmp_path, monkeypatch):
    calls: list[int] = []
    original = non_finite_guard.all_finite

    def counted(tensors):
        calls.append(1)
        return original(tensors)

    monkeypatch.setattr(non_finite_guard, "all_finite", counted)
    # 4 batches of 4 per epoch, 2 per step: 2 steps per epoch; one check at the start, one per step.
    kwargs = {"batch_size": 4, "accumulate_grad_batches": 2, "limit_train_batches": 4}
    trainer = fit(tmp_path, Poisoned(), [], max_epochs=2, **kwargs)
    assert trainer.global_step == 4 and len(calls) == 1 + 4
    # NaN written by the first step (after batches 0 and 1): stopped before batch 2.
    model = Poisoned(at=0)
    with pytest.raises(TrainingDiverged, match=r"epoch 0, global step 1: the weights are not finite after"):
        fit(tmp_path, model, [], max_epochs=2, **kwargs)
    assert model.batches["train"] == [(0, 0), (0, 1)]


@pytest.mark.parametrize("sanity_steps", [0, 1])
def test_non_finite_weights_at_the_start_refuse_the_fit(tmp_path, sanity_steps):
    model = Poisoned()
    with torch.no_grad():
        poison(model, "head.bias", NAN)
    with pytest.raises(TrainingDiverged) as info:
        fit(tmp_path, model, [], num_sanity_val_steps=sanity_steps)
    assert info.value.what == (
        "the weights of the model as built are not finite before training (1 of 8 tensors: head.bias)"
    )
    assert model.batches["train"] == model.batches["val"] == [] and not info.value.weights_finite
    # Resuming from a checkpoint whose weights are NaN: named.
    good = fit(tmp_path, Poisoned(), [], max_epochs=1)
    bad = tmp_path / "bad.ckpt"
    good.save_checkpoint(bad)
    state = torch.load(bad, weights_only=False)
    state["state_dict"]["backbone.1.running_mean"][0] = NAN
    torch.save(state, bad)
    with pytest.raises(
        TrainingDiverged, match=rf"epoch 1, global step 2: the weights loaded from {bad} are not"
    ):
        fit(tmp_path, Poisoned(), [], ckpt_path=bad, num_sanity_val_steps=sanity_steps)


class WithMask(Poisoned):
    def __init__(self, mask) -> None:
        super().__init__()
        self.register_buffer("mask", torch.tensor(mask))


def test_buffers_holding_inf_from_the_start_are_constants_but_nan_is_refused(tmp_path):
    trainer = fit(tmp_path, WithMask([0.0, -INF]), [], max_epochs=1)  # an attention-style mask
    assert trainer.global_step == 2
    with pytest.raises(TrainingDiverged, match=r"before training \(1 of 9 tensors: mask\)"):
        fit(tmp_path, WithMask([0.0, NAN]), [], max_epochs=1)


@pytest.mark.parametrize("check", ["all_finite", "largest_abs"])  # the CPU path, the accelerator path
def test_the_weight_check_cannot_overflow_and_sees_every_nan_and_inf(check):
    big = torch.full((4,), 3e38)  # finite: a sum or 2-norm would overflow to inf
    finite = [big, -big, torch.ones(2, dtype=torch.bfloat16), torch.ones(3, dtype=torch.float16)]
    if check == "all_finite":
        ok = non_finite_guard.all_finite
        assert ok([*finite, torch.empty(0)]) and ok([])
    else:

        def ok(tensors):
            return bool(torch.isfinite(_finite.largest_abs(tensors)))

    assert ok(finite)
    for bad in (NAN, INF, -INF):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            assert not ok([*finite, torch.tensor([1.0, bad], dtype=dtype)]), (bad, dtype)
