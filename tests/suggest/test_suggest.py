"""`lightning-recipes suggest`: the decision rule, the probe, the label matching and the printed command."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_recipes import suggest as sg
from lightning_recipes._suggest_data import _imagenet_names, balanced_subsample, match_labels
from lightning_recipes.cli import main
from lightning_recipes.recipes import SCENARIOS, list_recipes


def measured(per_class: float, pretrained: float, random: float, as_is: float | None = None):
    return sg.Measurement(
        classes=4,
        min_per_class=int(per_class),
        median_per_class=per_class,
        probed=200,
        majority=0.25,
        probe_pretrained=pretrained,
        probe_random=random,
        as_is=as_is,
        label_match=4 if as_is is not None else 0,
    )


@pytest.mark.parametrize(
    ("m", "scenario"),
    [
        (measured(20, 0.95, 0.70), "fine-tune"),  # small, similar: 83 % of the random probe's errors gone
        (measured(5000, 0.95, 0.70), "fine-tune"),  # large, similar
        (measured(20, 0.70, 0.70), "add-layers"),  # small, different
        (measured(5000, 0.70, 0.72), "scratch"),  # large, different
        (measured(20, 0.95, 0.70, as_is=0.93), "as-is"),  # the pretrained classifier already fits
        (measured(20, 0.95, 0.70, as_is=0.60), "fine-tune"),  # names match, but it does not fit
        (measured(sg.LARGE_PER_CLASS, 0.70, 0.70), "scratch"),  # "large" starts at the threshold
        (measured(sg.LARGE_PER_CLASS - 1, 0.70, 0.70), "add-layers"),
    ],
)
def test_decide_follows_the_strategy_table(m, scenario):
    decided, reason = sg.decide(m)
    assert decided == scenario
    assert f"{m.median_per_class:g}" in reason or scenario == "as-is"


@pytest.mark.parametrize("m", [measured(20, 0.70, 0.70), measured(5000, 0.95, 0.70, as_is=0.93)])
def test_a_smaller_model_is_distilled_from_the_backbone(m):
    scenario, reason = sg.decide(m, smaller=True)
    without = sg.decide(m)
    assert scenario == "distill" and without[0] != "distill"
    assert reason.endswith(f"Without --smaller: {without[0]}, {without[1]}")
    assert ("scoring 0.93 as-is" in reason) == (m.as_is is not None)
    recipe = sg.choose_recipe("text", "distill", "my-backbone")
    assert recipe is not None and recipe.name == "text/sst2_minilm_distill_local"


def test_similarity_is_the_share_of_random_feature_errors_removed():
    assert measured(20, 0.90, 0.60).similarity == pytest.approx(0.75)  # errors 0.40 -> 0.10
    assert measured(20, 0.60, 0.60).similarity == pytest.approx(0.0)
    # Random features already solve it: at most one example's worth of error is left to remove.
    assert measured(20, 1.0, 1.0).similarity == pytest.approx(0.0)
    assert measured(20, 0.99, 1.0).similarity == pytest.approx(-1.0)
    similar = measured(20, 1 - 0.4 * (1 - sg.SIMILAR), 0.60)  # exactly at the threshold
    assert similar.similarity == pytest.approx(sg.SIMILAR) and sg.decide(similar)[0] == "fine-tune"


def test_probe_accuracy_tells_informative_from_noise_features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    informative = np.eye(3)[y] * 5 + rng.normal(size=(90, 3))
    noise = rng.normal(size=(90, 20))
    assert sg.probe_accuracy(np.hstack([informative, noise]), y) > 0.9
    assert sg.probe_accuracy(noise, y) < 0.6
    with pytest.raises(ValueError, match=r"2 examples or more.*\[30, 30, 1\]"):
        sg.probe_accuracy(noise[:61], np.r_[y[:60], 2])


def test_balanced_subsample_caps_each_class():
    targets = np.array([0] * 100 + [1] * 5 + [2] * 50)
    picked = balanced_subsample(targets, max_examples=60, seed=0)
    assert np.bincount(targets[picked]).tolist() == [20, 5, 20]
    assert picked.tolist() == balanced_subsample(targets, max_examples=60, seed=0).tolist()


def test_class_names_match_imagenet_labels_by_any_name():
    import timm

    names = _imagenet_names(timm.create_model("test_resnet", pretrained=False))
    assert len(names) == 1000 and names[0][:2] == ["n01440764", "tench"]
    assert match_labels(["Tench", "goldfish", "n01443537", "my_cat"], names) == [0, 1, 1, None]


def parse(command: str, capsys) -> dict:
    """Run the printed command with --print_config; return the resolved recipe."""
    argv = shlex.split(command)
    assert argv[:2] == ["lightning", "run"]
    code = main([*argv[1:], "--print_config"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return yaml.safe_load(out.out)


@pytest.mark.parametrize("family", ["image", "text"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_suggested_command_parses(family, scenario, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = sg.choose_recipe(family, scenario, "some-backbone")
    if recipe is None:
        cell = [r.name for r in list_recipes() if (r.family, r.scenario) == (family, scenario)]
        assert all(sg.DATA_CLASS[family] not in r.path.read_text() for r in list_recipes() if r.name in cell)
        return
    data = str(tmp_path / "my data")  # a space: the command quotes it
    details = {"text_column": "review", "label_column": "stars", "layout": "class folders"}
    classes = [f"c{i}" for i in range(7)]
    config = parse(sg.recipe_command(recipe, family, data, "my-backbone", classes, details), capsys)
    model, args = config["model"]["init_args"], config["data"]["init_args"]
    recipe_model = yaml.safe_load(recipe.path.read_text())["model"].get("init_args") or {}
    if recipe_model.get("head") != "pretrained" or recipe_model.get("num_classes") is not None:
        assert model["num_classes"] == 7  # a head that trains: the data's classes
    else:
        assert model.get("num_classes") is None  # the pretrained head as-is: its own labels
    stages = config["stages"]
    # The backbone replaces the recipe's model only where the recipe loads pretrained weights; a
    # from-scratch recipe keeps its own architecture (tests/suggest/test_suggest_commands.py runs them).
    own = recipe_model.get("model_name_or_path")
    expected = "my-backbone" if sg.loads_pretrained_weights(family, recipe_model) else own
    assert model["model_name_or_path"] == expected
    assert (scenario == "scratch") == (expected == own)
    if family == "image":
        assert args["root"] == data
        # a folder without splits is split for every stage that needs one
        assert ("fit" not in stages and "validate" not in stages) or args["val_fraction"] > 0
        assert "test" not in stages or args["test_fraction"] > 0
    else:
        assert (args["train_file"], args["text_column"], args["label_column"]) == (data, "review", "stars")
        assert args.get("dataset") is None and args.get("val_file") is None
        assert args.get("label_names") is None
        if "fit" in stages:  # validated on 10 % of the file; no test file to test on
            assert args["val_fraction"] == 0.1 and "test" not in stages and args.get("test_file") is None
        else:  # as-is: the whole file is scored
            assert args["test_file"] == data


def test_image_suggestion_end_to_end_with_a_weights_file(tmp_path, image_folder, capsys, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setattr(sg, "MAX_IMAGE_SIZE", 32)  # the documented cap, lowered: a fast test

    from lightning_recipes.modules.image import create_backbone

    torch.manual_seed(1)
    weights = tmp_path / "weights.safetensors"
    save_file(create_backbone("test_resnet", pretrained=False).state_dict(), str(weights))
    root = image_folder(splits=("train", "val"), per_class=6)
    code = main(["suggest", "--data", str(root), "--backbone", "test_resnet", "--pretrained", str(weights)])
    out = capsys.readouterr().out
    assert code == 0
    assert "3 classes; training examples per class: min 6, median 6" in out
    assert "majority-class baseline          0.333" in out
    assert "as-is accuracy                   n/a (0 of 3 class names" in out
    assert "Margins:    similarity " in out and "Confidence: " in out  # how close the call is
    command = out.split("Run:")[1].strip()
    config = parse(command, capsys)
    scenario = out.split("Scenario:")[1].split()[0]
    assert config["data"]["init_args"]["root"] == str(root)
    assert config["model"]["init_args"]["pretrained"] == (False if scenario == "scratch" else str(weights))


@pytest.fixture
def sentiment_model(tmp_path: Path) -> Path:
    """A tiny BERT sentiment classifier (labels negative/positive) trained to fit 'good'/'bad' sentences."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "the", "a"]
    BertWordPieceTokenizer({w: i for i, w in enumerate(words)}).save(str(tmp_path / "tok.json"))
    tokenizer = BertTokenizerFast(tokenizer_file=str(tmp_path / "tok.json"))
    config = BertConfig(
        vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    texts, labels = sentences(40, seed=1)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: one thread is faster, and far faster on a busy machine
    try:
        for _ in range(40):
            loss = model(**batch, labels=torch.tensor(labels)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path / "sentiment"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentences(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(n)]
    fill = ["the", "film", "plot", "a"]
    texts = [" ".join([("good" if y else "bad"), *rng.choice(fill, 3)]) for y in labels]
    return texts, labels


def test_text_classifier_that_already_fits_is_used_as_is(sentiment_model, tmp_path, capsys):
    texts, labels = sentences(30, seed=2)
    rows = [f"{t},{'positive' if y else 'negative'}" for t, y in zip(texts, labels, strict=True)]
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join(["text,label", *rows]))
    result = sg.suggest(str(data), str(sentiment_model))
    m = result.measurement
    assert (result.family, result.scenario, m.classes, m.label_match) == ("text", "as-is", 2, 2)
    assert m.as_is == 1.0 and m.min_per_class == 15
    assert m.as_is_interval == (1.0, 1.0)  # every resample of the probed examples is all right
    lo, hi = m.similarity_interval
    assert lo <= m.similarity <= hi
    label_map = {"negative": 0, "positive": 1}
    assert result.details == {"text_column": "text", "label_column": "label", "label_map": label_map}
    if result.command is None:  # no shipped text as-is recipe yet: the report says so
        expected = "Recipe:     none shipped: no text as-is recipe reads a TextDataModule"
        assert expected in sg.report(result, str(data), "m")
    else:
        assert parse(result.command, capsys)["data"]["init_args"]["train_file"] == str(data)


def test_smaller_prints_the_distill_command_with_the_backbone_as_teacher(sentiment_model, tmp_path, capsys):
    texts, labels = sentences(30, seed=2)
    rows = [f"{t},{'positive' if y else 'negative'}" for t, y in zip(texts, labels, strict=True)]
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join(["text,label", *rows]))
    assert main(["suggest", "--data", str(data), "--backbone", str(sentiment_model), "--smaller"]) == 0
    out = capsys.readouterr().out
    assert "Scenario:   distill" in out and "Without --smaller: as-is" in out
    assert "Recipe:     text/sst2_minilm_distill_local" in out
    config = parse(out.split("Run:")[1].strip(), capsys)
    model = config["model"]["init_args"]
    assert (model["model_name_or_path"], model["every_other_block"], model["head"]) == (
        str(sentiment_model),
        True,
        "pretrained",
    )
    assert model.get("num_classes") is None  # the teacher's own head and labels
    assert config["data"]["init_args"]["train_file"] == str(data)
    teacher = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("Distillation")]
    assert teacher[0]["init_args"]["teacher"] is None  # the backbone at full depth


def test_text_files_as_they_come_are_read_and_kept_in_the_command(sentiment_model, tmp_path, capsys):
    """A Latin-1 ``text;label`` .txt file: suggest reads it with the data module's options, and the printed
    command passes them on."""
    texts, labels = sentences(30, seed=2)
    rows = [f"{t} caf\u00e9;{'positive' if y else 'negative'}" for t, y in zip(texts, labels, strict=True)]
    data = tmp_path / "reviews.txt"
    data.write_bytes("\n".join(rows).encode("latin-1"))
    with pytest.raises(ValueError, match="encoding"):
        sg.suggest(str(data), str(sentiment_model), delimiter=";")  # not UTF-8: the error names the option
    result = sg.suggest(str(data), str(sentiment_model), encoding="latin-1", delimiter=";")
    assert result.details["file_options"] == {"encoding": "latin-1", "delimiter": ";"}
    assert result.measurement.classes == 2 and result.measurement.as_is == 1.0
    recipe = sg.choose_recipe("text", "fine-tune", str(sentiment_model))
    command = sg.recipe_command(recipe, "text", str(data), "m", ["negative", "positive"], result.details)
    init = parse(command, capsys)["data"]["init_args"]
    assert (init["encoding"], init["delimiter"], init["train_file"]) == ("latin-1", ";", str(data))


def test_suggest_errors_name_the_bad_input(tmp_path, capsys):
    assert main(["suggest", "--data", str(tmp_path / "nowhere"), "--backbone", "resnet18"]) == 1
    assert f"Data '{tmp_path / 'nowhere'}' not found: give an image folder" in capsys.readouterr().err
    assert main(["suggest", "--data", str(tmp_path), "--backbone", "x", "--family", "audio"]) == 2
    assert "invalid choice: 'audio'" in capsys.readouterr().err
    data = tmp_path / "t.csv"
    data.write_text("review,label\nfine,a\nbad,b\n")
    assert main(["suggest", "--data", str(data), "--backbone", "x"]) == 1
    assert "no 'sentence' or 'text' column; pass --text-column (columns: ['review', 'label'])" in (
        capsys.readouterr().err
    )


# -- the quadrants on real data and real (zoo or ../shared) weights ------------------------------
def textures(root: Path, per_class: int, classes: int = 4, seed: int = 0) -> Path:
    """Smoothed noise whose class is its blur: learnable, and unlike the digits the zoo backbone knows."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"texture{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sigma = 0.6 + 0.25 * c
            pixels = gaussian_filter(rng.normal(size=(24, 24, 3)), sigma=(sigma, sigma, 0))
            pixels = np.clip(pixels / pixels.std() * 40 + 128, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"texture{c}" / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("quadrant", ["similar-small", "different-small", "different-large"])
def test_zoo_backbone_quadrants(quadrant, tmp_path, capsys):
    """resnet10t.digits04 (trained on digits 0-4): digits 5-9 are similar; blurred-noise textures are not."""
    from lightning_recipes.data.digits import export_digits

    if quadrant == "similar-small":
        data, expected = export_digits(tmp_path, [5, 6, 7, 8, 9], train_per_class=10), "fine-tune"
    elif quadrant == "different-small":
        data, expected = textures(tmp_path / "few", per_class=60), "add-layers"
    else:
        data, expected = textures(tmp_path / "many", per_class=sg.LARGE_PER_CLASS, classes=2), "scratch"
    result = sg.suggest(str(data), "resnet10t.digits04")
    m = result.measurement
    assert result.scenario == expected, sg.report(result, str(data), "resnet10t.digits04")
    assert (m.similarity >= sg.SIMILAR) == (expected == "fine-tune")
    assert (m.median_per_class >= sg.LARGE_PER_CLASS) == (expected == "scratch")
    assert m.probed <= sg.MAX_EXAMPLES and m.as_is is None
    config = parse(result.command, capsys)
    assert config["data"]["init_args"]["root"] == str(data)
    # scratch keeps its recipe's own architecture (random init); the others take the probed backbone
    model = config["model"]["init_args"]
    if expected == "scratch":
        assert model["pretrained"] is False and model["model_name_or_path"] != "resnet10t.digits04"
    else:
        assert model["model_name_or_path"] == "resnet10t.digits04"


@pytest.mark.slow
def test_minilm_finds_sst2_similar_to_its_pretraining(shared_dir, tmp_path, capsys):
    data = tmp_path / "sst2_300.tsv"
    data.write_text("".join((shared_dir / "data" / "sst2" / "dev.tsv").read_text().splitlines(True)[:301]))
    model = str(shared_dir / "models" / "all-MiniLM-L6-v2")
    result = sg.suggest(str(data), model)
    m = result.measurement
    assert (result.scenario, m.classes, m.min_per_class < 1000, m.as_is) == ("fine-tune", 2, True, None)
    assert m.probe_pretrained > m.probe_random + 0.1 and m.similarity >= sg.SIMILAR
    args = parse(result.command, capsys)["data"]["init_args"]
    assert (args["train_file"], args["text_column"], args["label_column"]) == (str(data), "sentence", "label")


@pytest.mark.slow
def test_imagenet_backbone_scores_classes_named_after_its_labels(shared_dir, tmp_path):
    backbone = f"local-dir:{shared_dir / 'models' / 'efficientnet_lite0'}"
    data = textures(tmp_path / "fish", per_class=6, classes=2)
    (data / "texture0").rename(data / "tench")
    (data / "texture1").rename(data / "goldfish")
    result = sg.suggest(str(data), backbone)
    m = result.measurement
    assert m.label_match == 2 and m.as_is is not None and 0.0 <= m.as_is <= 1.0
    # Blurred noise is no fish: ImageNet's classifier does not fit these classes, so not as-is.
    assert (result.scenario == "as-is") == (m.as_is >= sg.AS_IS_ACCURACY)
