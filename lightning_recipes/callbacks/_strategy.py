"""The one test of which strategies keep a whole, unsharded model, for the callbacks that need one."""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy


def whole_model_refusal(callback: str, strategy: type, why: str) -> str | None:
    """``None`` when ``strategy`` (a strategy class) keeps the whole model on each process (one device, or
    DDP), else why ``callback`` refuses it: ``why`` and the fix. DeepSpeed subclasses DDP and is refused.

    Example::

        >>> from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
        >>> whole_model_refusal("EMA", DDPStrategy, "...") is None
        True
        >>> whole_model_refusal("EMA", FSDPStrategy, "it keeps a whole copy")
        'EMA supports single-device and DDP strategies, not FSDPStrategy: it keeps a whole copy'
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy

    whole = (SingleDeviceStrategy, DDPStrategy)
    if issubclass(strategy, whole) and not issubclass(strategy, DeepSpeedStrategy):
        return None
    return f"{callback} supports single-device and DDP strategies, not {strategy.__name__}: {why}"
