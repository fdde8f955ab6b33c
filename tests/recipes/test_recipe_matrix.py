"""The recipe matrix: every scenario x family cell has a recipe that runs here, and each reaches its moment.

Recipes are found and classified from their headers (``# Scenario:``, ``# Family:``) and bodies
(:func:`~lightning_recipes.recipes.offline_blockers`), so a recipe added to ``recipes/`` is picked up
with no list to keep. The end-to-end test runs every offline recipe as shipped (real ``../shared``
weights and data, or the zoo) with tiny limits and asserts the moment its scenario is defined by.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_recipes.callbacks.distillation import Distillation
from lightning_recipes.callbacks.freeze_unfreeze import FreezeUnfreeze
from lightning_recipes.cli import LightningRecipesCLI, main
from lightning_recipes.modules._hf import transformer_blocks
from lightning_recipes.recipes import (
    FAMILIES,
    SCENARIOS,
    RecipeHeaderError,
    list_recipes,
    load_recipe,
    offline_blockers,
    read_header,
    recipe_matrix,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
RECIPES = list_recipes()
OFFLINE = [r for r in RECIPES if r.offline]


def write(tmp_path: Path, header: str, body: str = "seed_everything: 1\n") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(header + body)
    return path


# -- the header standard -------------------------------------------------------------------------
def test_every_recipe_names_a_scenario_and_a_family():
    assert RECIPES, "no recipes found"
    for recipe in RECIPES:
        assert recipe.scenario in SCENARIOS and recipe.family in FAMILIES
        header = read_header(recipe.path)
        assert header["Scenario"].startswith(f"{recipe.scenario} -- "), recipe.name
        assert header["Family"].startswith(f"{recipe.family} -- "), recipe.name


def test_every_training_recipe_states_its_global_batch():
    """The header line ``# Global batch: <n> ...`` is batch_size x accumulation (or GlobalBatch size)."""
    training = [r for r in RECIPES if r.global_batch is not None]
    assert len(training) >= 15
    for recipe in training:
        stated = read_header(recipe.path).get("Global batch", "")
        assert stated.split(" ")[0] == str(recipe.global_batch), (recipe.name, stated, recipe.global_batch)
        assert "on N devices" in stated or "GlobalBatch keeps" in stated, recipe.name
    keeps = [r.name for r in training if "GlobalBatch keeps" in read_header(r.path)["Global batch"]]
    assert sorted(keeps) == ["lm/gpt2_add_layers", "lm/gpt2_finetune", "lm/gpt2_lora"]


def test_header_continuation_lines_join_their_key(tmp_path):
    path = write(tmp_path, "# Desc.\n# Scenario: as-is -- no\n#   Training: none\n# Family: lm -- x\n")
    assert read_header(path) == {"": "Desc.", "Scenario": "as-is -- no Training: none", "Family": "lm -- x"}
    recipe = load_recipe(path)
    assert (recipe.name, recipe.scenario, recipe.family) == ("recipe", "as-is", "lm")
    assert recipe.description == "Desc."


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "# D.\n# Family: image -- x\n",
            r"no '# Scenario: <fine-tune\|add-layers\|scratch\|as-is\|adapters\|distill",
        ),
        ("# D.\n# Scenario: finetune -- x\n# Family: image\n", r"starts with 'finetune'.*mean 'fine-tune'"),
        ("# D.\n# Scenario: scratch -- x\n#   Family: image\n", r"has no '# Family: <image\|text\|lm>"),
        ("# D.\n# Scenario: scratch\n# Family: vision -- x\n", r"starts with 'vision', which is not one of"),
    ],
)
def test_a_header_without_its_keywords_is_an_error_naming_the_file(tmp_path, header, message):
    with pytest.raises(RecipeHeaderError, match=message) as info:
        load_recipe(write(tmp_path, header))
    assert str(tmp_path / "recipe.yaml") in str(info.value)


# -- the offline rule ----------------------------------------------------------------------------
def test_offline_rule(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")

    def blockers(model: dict, data: dict | None = None) -> list[str]:
        return offline_blockers({"model": {"init_args": model}, "data": {"init_args": data or {}}}, tmp_path)

    assert blockers({"model_name_or_path": "resnet10t.digits04"}) == []  # the zoo builds offline
    assert blockers({"model_name_or_path": "local-dir:./weights"}) == []
    assert blockers({"model_name_or_path": "resnet18", "pretrained": False}) == []  # architecture only
    hub = "model model_name_or_path 'resnet18': pretrained weights from the Hub"
    assert blockers({"model_name_or_path": "resnet18"}) == [hub]
    missing = "model model_name_or_path 'local-dir:./nope': folder not found"
    assert blockers({"model_name_or_path": "local-dir:./nope"}) == [missing]
    assert blockers({"model_name_or_path": "bert-base-uncased", "pretrained": False}) == [
        "model model_name_or_path 'bert-base-uncased': pretrained weights from the Hub"  # its config.json
    ]
    config = {"model_type": "bert"}
    assert blockers({"model_name_or_path": "bert", "pretrained": False, "config": config}) == []
    assert blockers({"config": {}}, {"train_file": "texts/*.txt", "tokenizer_dir": "runs/tok"}) == []
    assert blockers({"config": {}}, {"train_file": "my.csv", "dataset": "nyu-mll/glue"}) == [
        "data dataset 'nyu-mll/glue': a Hub dataset",
        "data train_file 'my.csv': not found (your data)",
    ]


def test_offline_rule_reads_a_distillation_teacher(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "best.ckpt").write_bytes(b"")

    def blockers(teacher: str | None) -> list[str]:
        callback = {"class_path": "x.Distillation", "init_args": {"teacher": teacher}}
        return offline_blockers({"trainer": {"callbacks": [callback]}}, tmp_path)

    assert blockers(None) == blockers("resnet10t.digits04") == blockers("runs/best.ckpt") == []
    missing = "trainer callback Distillation teacher 'runs/other.ckpt': file not found"
    assert blockers("runs/other.ckpt") == [missing]
    assert blockers("./teacher") == ["trainer callback Distillation teacher './teacher': folder not found"]
    assert blockers("distilbert-base-uncased-finetuned-sst-2-english") == [
        "trainer callback Distillation teacher 'distilbert-base-uncased-finetuned-sst-2-english': pretrained "
        "weights from the Hub"
    ]


# -- the CLI ---------------------------------------------------------------------------------------
def test_list_shows_family_scenario_and_offline(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "scenario", "offline", "description"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:]}
    assert rows == {r.name: [r.family, r.scenario, "yes" if r.offline else "no"] for r in RECIPES}


def test_list_matrix_shows_every_cell(capsys):
    assert main(["list", "--matrix"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:]] == list(SCENARIOS)
    cells = recipe_matrix(RECIPES)
    for family, line in zip(FAMILIES, lines[1:4], strict=True):
        row = [cell.strip() for cell in line.split("|")]
        assert row[0] == family
        for scenario, cell in zip(SCENARIOS, row[1:], strict=True):
            names = [r.name.split("/")[-1] + ("*" if r.offline else "") for r in cells[family, scenario]]
            assert cell == (", ".join(names) or "-")
    assert main(["list", "--wide"]) == 2
    assert "takes only --matrix" in capsys.readouterr().err


# -- the matrix ----------------------------------------------------------------------------------
def test_every_cell_has_a_recipe_and_one_that_runs_offline_here():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: the offline recipes read real weights and data from ../shared")
    cells = recipe_matrix(RECIPES)
    empty = [f"{family} x {scenario}" for (family, scenario), recipes in cells.items() if not recipes]
    online = [
        f"{family} x {scenario} ({', '.join(r.name for r in recipes)})"
        for (family, scenario), recipes in cells.items()
        if recipes and not any(r.offline for r in recipes)
    ]
    assert not empty and not online, (
        f"cells with no recipe: {empty or 'none'}; "
        f"cells with no recipe that runs offline here: {online or 'none'}"
    )


# -- every offline recipe, end to end --------------------------------------------------------------
TINY = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.limit_predict_batches=1",
    "--trainer.enable_progress_bar=false",
]


class Probe(Callback):
    """Records how many backbone elements are trainable at the start of each training epoch, the
    backbone's weights at the end of training (before a test stage loads the best checkpoint), and, in a
    distill run, the teacher and whether its logits reached the module for each training batch."""

    def __init__(self) -> None:
        self.trainable: list[int] = []
        self.trained: dict[str, torch.Tensor] | None = None
        self.teacher: torch.nn.Module | None = None
        self.taught: list[bool] = []

    def on_train_start(self, trainer, pl_module) -> None:
        teachers = [cb.teacher for cb in trainer.callbacks if isinstance(cb, Distillation)]
        self.teacher = teachers[0] if teachers else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # after Distillation's own hook (the probe is the last callback): its logits for this batch
        logits = pl_module.teacher_logits
        self.taught.append(logits is not None and bool(torch.isfinite(logits.logits).all()))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.trainable.append(sum(p.numel() for p in backbone(pl_module).parameters() if p.requires_grad))

    def on_train_end(self, trainer, pl_module) -> None:
        self.trained = weights(backbone(pl_module))


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    return model.backbone if isinstance(getattr(model, "backbone", None), torch.nn.Module) else model


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def equal_share(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The share of elements (of the tensors both have) that are exactly equal."""
    same = total = 0
    for name in a.keys() & b.keys():
        if a[name].shape == b[name].shape:
            same += int((a[name] == b[name]).sum())
            total += a[name].numel()
    return same / max(total, 1)


def build(recipe, tmp_path: Path, *extra: str) -> LightningRecipesCLI:
    import yaml

    data = yaml.safe_load(recipe.path.read_text())["data"].get("init_args") or {}
    small = {"batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "train_size": 16}
    overrides = [f"--data.init_args.{k}={v}" for k, v in small.items() if data.get(k) is not None]
    if "cache_dir" in data or recipe.family != "image":
        overrides.append(f"--data.init_args.cache_dir={tmp_path / 'cache'}")
    # A logger of the run's own, in tmp_path (a recipe's LearningRateMonitor needs one).
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}}
    overrides.append(f"--trainer.logger={json.dumps(logger)}")
    args = ["--config", str(recipe.path), *TINY, f"--trainer.default_root_dir={tmp_path / 'run'}", *overrides]
    return LightningRecipesCLI(args=[*args, *extra], run=False, recipe_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", OFFLINE, ids=[r.name for r in OFFLINE])
def test_offline_recipe_reaches_its_defining_moment(recipe, tmp_path, monkeypatch):
    """fine-tune: starts from pretrained weights, trains the backbone; add-layers: the backbone is frozen,
    then the unfreeze epoch comes; scratch: random weights (they change with the seed); as-is: no fit
    stage, weights unchanged; adapters: the pretrained weights stay frozen and unchanged, a few trained;
    distill: the frozen teacher's logits reach every training step of a student half its depth (text, LM:
    every other block) or at most half its parameters (image)."""
    monkeypatch.chdir(REPO)  # recipes name ../shared relative to the repository root
    other_seed = backbone(build(recipe, tmp_path / "seed", "--seed_everything=7").model)
    cli = build(recipe, tmp_path)
    model, probe = cli.model, Probe()
    start = weights(backbone(model))
    # Pretrained weights do not depend on the seed; random ones do (LayerNorm's ones and zeros aside).
    seed_independent = equal_share(start, weights(other_seed))
    del other_seed
    freezer = next((cb for cb in cli.trainer.callbacks if isinstance(cb, FreezeUnfreeze)), None)
    if recipe.scenario == "add-layers":
        assert freezer is not None, f"{recipe.name}: an add-layers recipe unfreezes with FreezeUnfreeze"
        unfreeze = next(e for e in range(100) if freezer.target_stage(e, 1) > 0)
        cli.trainer.fit_loop.max_epochs = unfreeze + 1
    elif "fit" in cli.config.stages:
        cli.trainer.fit_loop.max_epochs = 1
    cli.trainer.callbacks.append(probe)
    cli.run_stages()
    end = probe.trained if probe.trained is not None else weights(backbone(model))
    changed = 1.0 - equal_share(start, end)
    total = sum(p.numel() for p in backbone(model).parameters())

    random_student = recipe.scenario == "distill" and cli.config.model.init_args.get("pretrained") is False
    if recipe.scenario == "scratch" or random_student:
        assert seed_independent < 0.5, f"{recipe.name}: the weights do not depend on the seed: not random"
        assert changed > 0.5
    else:
        assert seed_independent > 0.9, f"{recipe.name}: only {seed_independent:.0%} of weights are pretrained"
    if recipe.scenario == "as-is":
        assert "fit" not in cli.config.stages and probe.trainable == []
        assert changed == 0.0
    elif recipe.scenario == "fine-tune":
        assert probe.trainable == [total] and freezer is None
        assert changed > 0.5
    elif recipe.scenario == "add-layers":
        assert len(probe.trainable) == unfreeze + 1
        assert probe.trainable[0] < 0.1 * total, "the backbone trains before the unfreeze epoch"
        assert probe.trainable[-1] > probe.trainable[0], "nothing was unfrozen at the unfreeze epoch"
        assert changed > 0.0
    elif recipe.scenario == "adapters":
        trainable = {n for n, p in backbone(model).named_parameters() if p.requires_grad}
        assert 0 < probe.trainable[0] < 0.5 * total
        # parameters only: buffers (BatchNorm running statistics) still adapt, as docs/adapters.md says
        params = {n for n, _ in backbone(model).named_parameters()}
        frozen = {k: v for k, v in start.items() if k in params and k not in trainable}
        assert frozen and equal_share(frozen, end) == 1.0, "a frozen pretrained weight changed"
    elif recipe.scenario == "distill":
        teacher = probe.teacher
        assert teacher is not None, f"{recipe.name}: a distill recipe teaches with the Distillation callback"
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        assert probe.taught and all(probe.taught), "a training step ran without the teacher's logits"
        assert probe.trainable[0] == total and changed > 0.0  # the whole student learns
        if cli.config.model.init_args.get("every_other_block"):
            blocks = [len(transformer_blocks(m)[1]) for m in (teacher, model)]
            assert blocks[1] == (blocks[0] + 1) // 2, (
                f"student blocks {blocks[1]} of the teacher's {blocks[0]}"
            )
        else:
            sizes = [sum(p.numel() for p in m.parameters()) for m in (teacher, model)]
            assert sizes[1] <= 0.5 * sizes[0], f"student {sizes[1]:,} parameters, teacher {sizes[0]:,}"
