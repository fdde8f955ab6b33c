"""docs/subclassing.md, run: its downstream package written to tmp_path, trained by `lightning run`.

The Python blocks of the page are whole files (first line ``# my_project/<file>.py`` or
``# train.py``); the tests write them out as they are, so the page cannot drift from the code.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_recipes import connect
from lightning_recipes.cli import main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "subclassing.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def doc_files() -> dict[str, str]:
    """``{file name: source}`` of the page's python and yaml blocks (named by their first line)."""
    files = {}
    for lang, code in BLOCK.findall(DOC.read_text()):
        if lang in ("python", "yaml"):
            name = re.match(r"# ([\w/.]+\.(?:py|yaml))\b", code)
            assert name, f"a {lang} block of {DOC.name} does not start with '# <file name>':\n{code[:200]}"
            files[name.group(1)] = code
    return files


def head_group_is_the_head(model) -> bool:
    """The optimizer's ``"head"`` group holds exactly the parameters of ``model.head``."""
    group, head = model.param_groups()[0], {id(p) for p in model.head.parameters()}
    return group["name"] == "head" and {id(p) for p in group["params"]} == head


def _forget_project() -> None:
    for name in [n for n in sys.modules if n == "my_project" or n.startswith("my_project.")]:
        del sys.modules[name]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The page's files in ``tmp_path``, with ``my_project`` importable in this process."""
    for name, code in doc_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    _forget_project()
    yield tmp_path
    _forget_project()


# A test-only callback: after `test` (which restores the best checkpoint) it saves the trained model's
# logits on a fixed input, and at each epoch start which optimizer groups exist (FreezeUnfreeze).
RECORDER = """
import torch
from lightning.pytorch.callbacks import Callback


class Recorder(Callback):
    def __init__(self, path: str) -> None:
        self.path, self.groups = path, []

    def on_train_epoch_start(self, trainer, pl_module):
        frozen = not any(p.requires_grad for p in pl_module.backbone.parameters())
        self.groups.append(([g["name"] for g in trainer.optimizers[0].param_groups], frozen))

    def on_test_end(self, trainer, pl_module):
        images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        pl_module.eval()
        with torch.no_grad():
            logits = pl_module(images)
        torch.save({"images": images, "logits": logits, "groups": self.groups,
                    "label_names": pl_module.label_names}, self.path)
"""

# Subprocesses run on one thread: a few small batches gain nothing from more, and on a busy machine
# OpenMP threads that wait for each other make a one-second fit take twenty.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
CLI_SCRIPT = "import sys\nfrom lightning_recipes.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def test_every_block_is_a_file_the_tests_use():
    files = doc_files()
    assert set(files) == {
        "my_project/__init__.py",
        "my_project/models.py",
        "my_project/data.py",
        "my_project/text.py",
        "my_project/lm.py",
        "my_digits.yaml",
        "train.py",
    }


@pytest.mark.parametrize(
    "class_path, own",
    [
        ("my_project.MyClassifier", ["--model.width", "--model.head_dropout"]),
        ("my_project.text.MyTextClassifier", ["--model.width", "--model.layer_decay"]),
        ("my_project.lm.MyCausalLM", ["--model.top_k", "--model.config"]),
    ],
)
def test_help_lists_own_and_forwarded_options(project, capsys, class_path, own):
    """jsonargparse follows ``**kwargs``: the subclass's own arguments and the parents' are all there."""
    assert main(["fit", f"--model.help={class_path}"]) == 0
    out = capsys.readouterr().out
    forwarded = ["--model.lr ", "--model.backbone_lr", "--model.optimizer", "--model.agc_clip_factor"]
    for option in [*own, *forwarded]:
        assert option in out, f"{option} missing from --model.help={class_path}"
    if class_path == "my_project.MyClassifier":
        assert "hidden width of the MLP head" in out and "--model.num_classes" in out


def test_recipe_runs_end_to_end_and_reloads(project, run_script):
    """`lightning run my_digits.yaml` with class_path my_project.*; the best checkpoint reloads exactly."""
    recipe = yaml.safe_load((project / "my_digits.yaml").read_text())
    assert recipe["model"]["class_path"] == "my_project.MyClassifier"
    freeze, checkpoint = recipe["trainer"]["callbacks"]
    assert freeze["class_path"] == "lightning_recipes.callbacks.FreezeUnfreeze"
    assert checkpoint["init_args"]["monitor"] == "val/kappa"  # the extra metric picks the best
    freeze["init_args"]["unfreeze_at_epoch"] = 1  # unfreeze within the two epochs of the test
    (project / "recorder.py").write_text(RECORDER)
    record = project / "record.pt"
    recipe["trainer"]["callbacks"].append(
        {"class_path": "recorder.Recorder", "init_args": {"path": str(record)}}
    )
    (project / "my_digits.yaml").write_text(yaml.safe_dump(recipe))
    width = 32
    proc = run_script(
        CLI_SCRIPT,
        "run",
        "my_digits.yaml",
        "--model.init_args.model_name_or_path=test_resnet",  # tiny, random init: no network
        "--model.init_args.pretrained=false",
        f"--model.init_args.width={width}",
        "--model.init_args.lr=0.01",
        "--data.init_args.image_size=32",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        env={"PYTHONPATH": os.pathsep.join([str(project), str(REPO)]), **ONE_THREAD},
        cwd=project,
    )
    final = next(line for line in proc.stdout.splitlines() if line.startswith("Final metrics:"))
    assert "val/kappa=" in final and "test/kappa=" in final and "test/acc=" in final
    printed = dict(line.split(":", 1) for line in proc.stdout.splitlines() if line.endswith(".ckpt"))
    best = project / printed["Best checkpoint"].strip()  # relative to the run's folder, as in the recipe
    assert best.is_file() and best.is_relative_to(project / "runs" / "my_digits")

    recorded = torch.load(record, weights_only=False)
    # FreezeUnfreeze on the custom head: the head alone at epoch 0, the backbone joins at epoch 1.
    assert recorded["groups"] == [(["head"], True), (["head", "backbone"], False)]
    assert recorded["label_names"] == ["zero", "one", "two"]

    from my_project import MLPHead, MyClassifier

    restored = MyClassifier.load_from_checkpoint(best).eval()
    assert isinstance(restored.head, MLPHead) and restored.head[1].out_features == width
    assert restored.label_names == ["zero", "one", "two"]  # from the data, through the handshake
    assert [g["name"] for g in restored.param_groups()] == ["head", "backbone"]
    assert head_group_is_the_head(restored)
    with torch.no_grad():
        logits = restored(recorded["images"])
    # The same weights; only the thread count differs from the run's (float summation order).
    torch.testing.assert_close(logits, recorded["logits"], rtol=0, atol=1e-6)


def test_plain_python_script_connects_and_reloads(project, run_script):
    """train.py: connect() before Trainer.fit, then load_from_checkpoint with no CLI; names survive."""
    proc = run_script((project / "train.py").read_text(), env=ONE_THREAD, cwd=project)
    assert proc.stdout.strip().splitlines()[-1] == "['zero', 'one', 'two'] MLPHead"


def test_noisy_images_takes_part_in_the_handshake(project, image_folder):
    from my_project import MyClassifier, NoisyImages
    from my_project.data import AddNoise

    root = image_folder(splits=("",), per_class=4)
    data = NoisyImages(noise_std=0.5, root=str(root), val_fraction=0.25, batch_size=4, image_size=16)
    model = MyClassifier(width=8, model_name_or_path="test_resnet", pretrained=False, num_classes=3)
    connect(model, data)
    assert model.label_names == ["a", "b", "c"] and data.model_data_config == model.data_config
    data.setup("fit")
    assert isinstance(data.train_set.transform, AddNoise) and not isinstance(data.val_set.transform, AddNoise)
    images, _ = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and model(images).shape == (4, 3)


def _save_and_load(model, tmp_path: Path, cls):
    import lightning as L

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    return cls.load_from_checkpoint(tmp_path / "model.ckpt").eval()


def test_text_subclass_own_head(project, tmp_path):
    from my_project import MLPHead
    from my_project.text import MyTextClassifier
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    ).to_dict()
    model = MyTextClassifier(
        width=8, model_name_or_path="tiny", pretrained=False, config=config, num_classes=3, pooling="mean"
    ).eval()
    assert isinstance(model.head, MLPHead)
    assert head_group_is_the_head(model)
    batch = {
        "input_ids": torch.tensor([[2, 7, 9, 3], [2, 5, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
    }
    restored = _save_and_load(model, tmp_path, MyTextClassifier)
    assert isinstance(restored.head, MLPHead) and restored.head[1].out_features == 8
    with torch.no_grad():
        assert torch.equal(restored(batch), model(batch))


def test_causal_lm_subclass_logs_next_token_accuracy(project, tmp_path, tiny_trainer_kwargs):
    import lightning as L
    from my_project.lm import MyCausalLM
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    model = MyCausalLM(top_k=2, config={"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 32})
    ids = torch.randint(0, 32, (8, 12))
    loader = DataLoader([{"input_ids": row} for row in ids], batch_size=4)
    metrics = L.Trainer(**tiny_trainer_kwargs).validate(model, loader, verbose=False)[0]
    assert {"val/loss", "val/ppl", "val/acc"} <= set(metrics) and 0.0 <= metrics["val/acc"] <= 1.0
    with torch.no_grad():  # val/acc is the share of next tokens among the 2 most likely ones
        top2 = model.eval()(ids).topk(2, dim=-1).indices[:, :-1]
    expected = (top2 == ids[:, 1:, None]).any(-1).float().mean().item()
    assert metrics["val/acc"] == pytest.approx(expected, abs=1e-6)
    assert _save_and_load(model, tmp_path, MyCausalLM).top_k == 2
