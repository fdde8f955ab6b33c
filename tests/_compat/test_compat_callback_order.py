"""Lightning's callback order in lightning_recipes/_compat/_lightning.py, one test per entry.

An upgrade breaking a private API fails here, loudly, naming the library, its installed version, the
private name and the version the entry was checked against (``compat_helpers.broken``).
"""

from __future__ import annotations

import lightning as L
from compat_helpers import Tiny, broken, data, tiny_trainer
from lightning.pytorch.callbacks import LearningRateFinder

from lightning_recipes import _compat


def test_tuner_callbacks_run_first_unless_moved(tmp_path):
    order = []

    class Record(L.Callback):
        def __init__(self, name):
            self.name = name

        def on_train_epoch_start(self, trainer, pl_module):
            order.append(self.name)

    class Finder(LearningRateFinder):
        def on_fit_start(self, trainer, pl_module):
            pass

        def on_train_epoch_start(self, trainer, pl_module):
            order.append("finder")

    first, finder, last = Record("first"), Finder(), Record("last")

    class Mover(Record):
        def setup(self, trainer, pl_module, stage):
            _compat.run_before_tuner_callbacks(trainer, self)

    mover = Mover("mover")
    trainer = tiny_trainer(tmp_path, [first, mover, finder, last], limit_train_batches=1, limit_val_batches=0)
    assert trainer.callbacks[:4] == [finder, first, mover, last], broken(
        "lightning", "_CallbackConnector._reorder_callbacks no longer moves LearningRateFinder to the front"
    )
    trainer.fit(Tiny(), data())
    assert trainer.callbacks[:4] == [mover, finder, first, last], broken(
        "lightning", "trainer.callbacks can no longer be reordered in setup"
    )
    assert order == ["mover", "finder", "first", "last"], broken(
        "lightning", f"callback hooks no longer run in trainer.callbacks order: {order}"
    )
    trainer = tiny_trainer(tmp_path, [first, last])
    callbacks = trainer.callbacks
    _compat.run_before_tuner_callbacks(trainer, last)  # no tuner callback: nothing moves
    assert trainer.callbacks is callbacks
