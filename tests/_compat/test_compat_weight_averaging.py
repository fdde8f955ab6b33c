"""Lightning's WeightAveraging internals in lightning_recipes/_compat/_lightning.py, one test each.

An upgrade breaking a private API fails here, loudly, naming the library, its installed version, the
private name and the version the entry was checked against (``compat_helpers.broken``).
"""

from __future__ import annotations

from compat_helpers import Tiny, broken, data, tiny_trainer
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import AveragedModel

from lightning_recipes import _compat


def test_average_model_is_the_averaged_model_built_in_fit(tmp_path):
    callback = WeightAveraging()
    assert _compat.average_model(callback) is None, broken(
        "lightning", "WeightAveraging._average_model is no longer None before fit"
    )
    model = Tiny()
    tiny_trainer(tmp_path, [callback], limit_train_batches=3, limit_val_batches=0).fit(model, data())
    average = _compat.average_model(callback)
    assert isinstance(average, AveragedModel), broken(
        "lightning", f"WeightAveraging._average_model is a {type(average).__name__}, not an AveragedModel"
    )
    assert int(average.n_averaged) == 3 and type(average.module) is Tiny, broken(
        "lightning", "WeightAveraging._average_model no longer averages a copy of the module after each step"
    )
