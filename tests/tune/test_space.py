"""tune/space.py: distribution strings, space files, and keys checked against the recipe's options."""

from __future__ import annotations

import optuna
import pytest

from lightning_recipes.tune.space import (
    Dimension,
    SearchSpaceError,
    check_keys,
    make_dimension,
    parse_dimension,
    read_space_file,
)


def test_each_kind_draws_in_its_range_with_its_type():
    space = [
        parse_dimension("model.init_args.lr=loguniform:1e-5:1e-3"),
        parse_dimension("model.init_args.dropout=uniform:0:0.5"),
        parse_dimension("data.init_args.batch_size=int:4:8"),
        parse_dimension("model.init_args.head=choice:new,pretrained"),
        parse_dimension("trainer.precision=choice:32,bf16-mixed"),
    ]
    assert [d.kind for d in space] == ["loguniform", "uniform", "int", "choice", "choice"]
    assert space[3].choices == ("new", "pretrained") and space[4].choices == (32, "bf16-mixed")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        lr, dropout, batch, head, precision = (d.suggest(trial) for d in space)
        assert 1e-5 <= lr <= 1e-3 and 0 <= dropout <= 0.5
        assert isinstance(batch, int) and 4 <= batch <= 8
        assert head in ("new", "pretrained") and precision in (32, "bf16-mixed")
        study.tell(trial, 0.0)
    distributions = study.trials[0].distributions
    assert distributions["model.init_args.lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert distributions["data.init_args.batch_size"] == optuna.distributions.IntDistribution(4, 8)
    assert space[2].extremes() == (4, 8) and space[0].describe() == "loguniform:1e-05:0.001"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model.init_args.lr", "write KEY=DIST"),
        (
            "model.init_args.lr=log:1e-5:1e-3",
            "'log:1e-5:1e-3' is not a distribution; use loguniform:LOW:HIGH",
        ),
        ("model.init_args.lr=loguniform:0:1e-3", "needs LOW > 0 (a log scale); use uniform:0.0:0.001"),
        ("model.init_args.lr=uniform:1e-3:1e-5", "needs LOW < HIGH"),
        ("model.init_args.lr=uniform:1e-3", "needs two ends: uniform:LOW:HIGH"),
        ("model.init_args.lr=uniform:a:1", "LOW 'a' is not a number"),
        ("model.init_args.lr=uniform:0:inf", "HIGH 'inf' must be a finite number"),
        ("data.init_args.batch_size=int:4:8.5", "HIGH '8.5' must be an integer"),
        ("model.init_args.head=choice:", "is not a distribution"),
        ("model.init_args.head=choice:new,new", "names a value twice"),
    ],
)
def test_a_bad_distribution_is_one_line_naming_it(text, message):
    with pytest.raises(SearchSpaceError) as info:
        parse_dimension(text)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(text.partition("=")[0] if "=" in text else "--space")


def test_space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("model.init_args.lr: loguniform:1e-5:1e-3\ndata.init_args.batch_size: [16, 32]\n")
    assert read_space_file(path) == [
        Dimension("model.init_args.lr", "loguniform", 1e-5, 1e-3),
        Dimension("data.init_args.batch_size", "choice", choices=(16, 32)),
    ]
    path.write_text("- model.init_args.lr\n")
    with pytest.raises(SearchSpaceError, match="write a YAML mapping"):
        read_space_file(path)
    with pytest.raises(SearchSpaceError, match="a choice list needs one or more plain values"):
        make_dimension("model.init_args.lr", [[1, 2]])
    with pytest.raises(SearchSpaceError, match="no such file"):
        read_space_file(tmp_path / "nope.yaml")


def test_keys_are_checked_against_the_recipe_options():
    options = ["config", "model.init_args.lr", "model.init_args.backbone_lr", "trainer.max_epochs"]
    check_keys([make_dimension("model.init_args.lr", "uniform:0:1")], options)
    with pytest.raises(SearchSpaceError) as info:
        check_keys([make_dimension("model.init_args.lrr", "uniform:0:1")], options)
    assert str(info.value) == (
        "model.init_args.lrr: the recipe has no such option; did you mean model.init_args.lr or "
        "model.init_args.backbone_lr?"
    )
    with pytest.raises(SearchSpaceError, match="`lightning run RECIPE --help` lists them"):
        check_keys([make_dimension("optimizer.momentum", "uniform:0:1")], options)
    with pytest.raises(
        SearchSpaceError, match="a section of the recipe, not one option; .* model.init_args.lr"
    ):
        check_keys([make_dimension("model.init_args", "uniform:0:1")], options)
    with pytest.raises(SearchSpaceError, match="searched twice"):
        check_keys([make_dimension("trainer.max_epochs", "int:1:3")] * 2, options)
    with pytest.raises(SearchSpaceError, match="config: the recipe has no such option"):
        check_keys([make_dimension("config", "choice:a")], options)
