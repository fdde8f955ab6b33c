"""The model card of an export: ``README.md`` in the Hugging Face Hub's format (YAML front matter, then
Markdown), written from what the run knows: its resolved recipe, class names, logged test metrics and
per-class table, curve images, and the export's parity."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from lightning_recipes.export._formats import label_record
from lightning_recipes.export._source import Source

PIPELINE = {"image": "image-classification", "text": "text-classification", "lm": "text-generation"}
#: The Hub's ``library_name`` of each format (``checkpoint``: a run directory's own card).
LIBRARY = {
    "hf": "transformers",
    "timm": "timm",
    "torchscript": "pytorch",
    "onnx": "onnx",
    "checkpoint": "pytorch",
}
#: Logged metric key (after ``test/``) -> the Hub's metric id.
METRIC_IDS = {
    "acc": "accuracy",
    "f1": "f1",
    "precision": "precision",
    "recall": "recall",
    "mcc": "matthews_correlation",
    "rmse": "rmse",
    "mae": "mae",
    "ppl": "perplexity",
    "loss": "loss",
}
LOAD = {
    "hf-text": 'from transformers import pipeline\nclassify = pipeline("text-classification", model="{dir}")',
    "hf-lm": 'from transformers import pipeline\ngenerate = pipeline("text-generation", model="{dir}")',
    "hf-adapter": "from peft import AutoPeftModelForCausalLM\n"
    'model = AutoPeftModelForCausalLM.from_pretrained("{dir}")',
    "timm": 'import timm\nmodel = timm.create_model("local-dir:{dir}", pretrained=True).eval()',
    "torchscript": 'import torch\nmodel = torch.jit.load("{dir}/model.pt")  # inputs in export.json order',
    "onnx": 'import onnxruntime\nsession = onnxruntime.InferenceSession("{dir}/model.onnx")',
}


def base_model(source: Source) -> str | None:
    """The Hub id the model was fine-tuned from, or ``None`` (random init, a local folder, a zoo model)."""
    hp = source.module.hparams
    args = source.config.get("model", {}).get("init_args") or {}
    name = args.get("model_name_or_path", hp.get("model_name_or_path"))
    # a full checkpoint stores pretrained=False (its weights are all there); the run's recipe says what it was
    if not name or (args or hp).get("pretrained", True) is False:
        return None
    name = str(name)
    if name.startswith(("hf-hub:", "hf_hub:")):
        return name.split(":", 1)[1]
    if name.startswith(("local-dir:", "/", ".", "~")) or Path(name).exists():
        return None
    if source.family == "image":
        return f"timm/{name}" if "." in name else None
    return name


def _datasets(source: Source) -> list[str]:
    args = source.config.get("data", {}).get("init_args", {}) or {}
    name = args.get("dataset") or args.get("path")
    return [str(name)] if isinstance(name, str) and "/" in name and not Path(name).exists() else []


def front_matter(source: Source, record: dict[str, Any]) -> dict[str, Any]:
    fmt = record["format"]
    tags = ["lightning-recipes", PIPELINE[source.family], fmt]
    if getattr(source.module, "peft_model", None) is not None:
        tags.append("peft")
    meta: dict[str, Any] = {
        "library_name": LIBRARY[fmt],
        "pipeline_tag": PIPELINE[source.family],
        "tags": tags,
    }
    base = base_model(source)
    if base:
        meta["base_model"] = base
    datasets = _datasets(source)
    if datasets:
        meta["datasets"] = datasets
    metrics = [(k.removeprefix("test/"), v) for k, v in source.test_metrics.items()]
    ids = [(METRIC_IDS.get(k, k), k, v) for k, v in metrics]
    if ids:
        meta["metrics"] = sorted({i for i, _, _ in ids})
        dataset = {
            "name": datasets[0] if datasets else "the run's test split",
            "type": datasets[0] if datasets else "local",
        }
        results = [{"type": i, "value": round(v, 6), "name": f"test/{k}"} for i, k, v in ids]
        name = Path(str(source.run_dir or source.checkpoint)).name
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {"task": {"type": PIPELINE[source.family]}, "dataset": dataset, "metrics": results}
                ],
            }
        ]
    return meta


def _limitations(source: Source, record: dict[str, Any]) -> list[str]:
    module, notes = source.module, []
    if getattr(module, "peft_model", None) is not None and not record["merged_adapter"]:
        notes.append(
            "This folder holds an adapter, not a whole model: it needs its base model "
            f"({module.hparams.get('model_name_or_path')}) to load; `--merge` exports a standalone model."
        )
    if getattr(module, "tta", None) and "format" in record and record["format"] != "checkpoint":
        notes.append(
            f"The run evaluated with test-time augmentation (`tta: {module.tta}`): its metrics average the "
            "probabilities of several views of each image. The exported model scores one view; average "
            "its probabilities over the same views to reproduce them."
        )
    if record.get("class_map"):
        notes.append(
            "The model is used as-is: its outputs are the pretrained labels (`label_names`); the data's "
            "classes are the probability mass of their mapped labels (`class_map` in export.json)."
        )
    if getattr(module, "output_names", None) and not record.get("class_map"):
        notes.append("The classifier is the pretrained model's own head, unchanged by this run.")
    if source.family != "lm" and not source.test_metrics:
        notes.append(
            "The run logged no test metrics: the model's quality on held-out data is not recorded here."
        )
    return notes


def _use_lines(source: Source, record: dict[str, Any] | None) -> list[str]:
    if record is None and source.checkpoint is None:  # an as-is run: nothing trained, nothing to ship
        return [
            "## Use it",
            "",
            "Nothing was trained: the recipe scored the model as it builds it (`config.yaml` runs it again: "
            "`lightning run config.yaml`).",
            "",
        ]
    if record is None:  # the run directory's card: the checkpoint, and how to ship it
        cls = type(source.module)
        ckpt, run = source.checkpoint.resolve(), Path(source.run_dir or "/").resolve()
        ckpt = ckpt.relative_to(run) if ckpt.is_relative_to(run) else ckpt
        load = f"from {cls.__module__} import {cls.__name__}\nmodel = {cls.__name__}.load_from_checkpoint"
        return [
            "## Use it",
            "",
            "```python",
            f'{load}("{ckpt}").eval()',
            "```",
            "",
            "Ship it as a folder that loads without lightning_recipes (transformers, timm, TorchScript or "
            "ONNX), with this card and a parity check: `lightning-recipes export RUN_DIR --to DIR` "
            "(docs/export.md).",
            "",
        ]
    fmt, family = record["format"], source.family
    adapter = not record["merged_adapter"] and getattr(source.module, "peft_model", None) is not None
    key = ("hf-adapter" if family == "lm" and adapter else f"hf-{family}") if fmt == "hf" else fmt
    return [
        "## Use it",
        "",
        "```python",
        LOAD[key].format(dir="path/to/this/folder"),
        "```",
        "",
        "Inputs (`export.json`): "
        + ", ".join(f"`{k}` {v['shape']}" for k, v in record["inputs"].items())
        + f"; outputs: logits ({record['probabilities']} gives the probabilities).",
        "",
    ]


def _training(source: Source) -> list[str]:
    """Hardware, versions and wall time, from the run's ``run.json``."""
    info = source.run_info
    hw, seconds = info.get("hardware"), info.get("seconds") or {}
    if not hw:
        return []
    devices = f"{hw['devices']} x {hw['device_name']}" + (f", {hw['nodes']} nodes" if hw["nodes"] > 1 else "")
    lines = [
        "## Training",
        "",
        f"- Hardware: {devices} ({hw['accelerator']}, {hw['strategy']}, precision {hw['precision']}; "
        f"{hw['cpu_cores']} CPU cores, {hw['torch_threads']} torch threads).",
    ]
    if seconds:
        lines.append("- Wall time: " + ", ".join(f"{k} {_duration(v)}" for k, v in seconds.items()) + ".")
    versions = info.get("versions") or {}
    if versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return [*lines, ""]


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else (f"{m} min {s:02d} s" if m else f"{seconds:.1f} s")


def write_card(source: Source, folder: Path, record: dict[str, Any] | None = None) -> Path:
    """Write ``folder/README.md``: an export's card (``record``: its ``export.json``; the run's curve images
    are copied to ``folder/images/``), or with ``record=None`` the card of the run directory ``folder``
    itself, for its checkpoint (:func:`write_run_card`)."""
    family = source.family
    labels = label_record(source)
    meta_record = record or {"format": "checkpoint", **labels}
    lines = ["---", yaml.safe_dump(front_matter(source, meta_record), sort_keys=False).rstrip(), "---", ""]
    title = Path(str(source.run_dir or source.checkpoint)).name
    cls = type(source.module).__name__
    article = "An" if cls[0] in "AEIOU" else "A"
    when = f" (epoch {source.epoch}, step {source.step})" if source.epoch is not None else ""
    if source.checkpoint is None:
        what = "used as built by its recipe (as-is: no checkpoint, nothing trained)"
    else:
        how = f"exported as **{record['format']}** from" if record else "checkpoint"
        what = f"trained with lightning_recipes, {how} `{source.checkpoint.name}`{when}"
    lines += [f"# {title}", "", f"{article} {cls} ({PIPELINE[family]}) {what}.", ""]
    if source.ema:
        lines += [
            f"**Weights**: the exponential moving average of the trained weights (EMA, decay "
            f"{source.ema['decay']}, {source.ema['updates']} optimizer steps), the weights the run validated "
            "and tested.",
            "",
        ]
    base = source.config.get("model", {}).get("init_args", {}).get("model_name_or_path")
    base = base or source.module.hparams.get("model_name_or_path")
    if base:
        lines += [f"Base model: `{base}`.", ""]
    if "label_names" in labels:
        names = labels["label_names"]
        shown = ", ".join(f"`{n}`" for n in names[:50]) + (
            f" ... ({len(names)} in all)" if len(names) > 50 else ""
        )
        lines += [f"**Task**: {labels['task']}, {len(names)} outputs: {shown}.", ""]
    lines += _use_lines(source, record)
    if family == "image":
        cfg = source.data_config or source.module.data_config
        lines += [
            f"Preprocessing (timm data config): input size {list(cfg['input_size'])}, mean "
            f"{list(cfg['mean'])}, std {list(cfg['std'])}, interpolation {cfg['interpolation']}, crop "
            f"{cfg.get('crop_pct')}.",
            "",
        ]
    elif getattr(source.module, "tokenizer", None) is not None:
        length = getattr(source.module, "max_length", None) or getattr(source.module, "context_length", None)
        where = "saved in this folder (`AutoTokenizer.from_pretrained`)" if record else "`model.tokenizer`"
        lines += [
            f"Preprocessing: the tokenizer {where}" + (f", max length {length}." if length else "."),
            "",
        ]
    lines += _results(source, folder, copy=record is not None)
    lines += _training(source)
    if record is not None:
        p = record["parity"]
        lines += [
            "## Export check",
            "",
            f"Loaded back without lightning_recipes, the export gives the checkpoint's "
            f"probabilities within {p['max_abs_diff']:.3g} (tolerance {p['tolerance']:g}) on {p['inputs']}.",
            "",
        ]
    notes = _limitations(source, {"merged_adapter": False, **labels, **(record or {})})
    if notes:
        lines += ["## Limitations", "", *[f"- {n}" for n in notes], ""]
    if source.config:
        recipe = yaml.safe_dump(source.config, sort_keys=False)
        lines += [
            "## Training recipe",
            "",
            "<details><summary>Resolved config.yaml</summary>",
            "",
            "```yaml",
            recipe.rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path


def write_run_card(source: Source) -> Path:
    """Write the card of a finished run into its run directory (``RUN_DIR/README.md``), for the checkpoint
    its stages ended with; the curves are linked where they are."""
    assert source.run_dir is not None
    return write_card(source, source.run_dir)


def _results(source: Source, folder: Path, copy: bool) -> list[str]:
    lines: list[str] = []
    if source.test_metrics:
        lines += ["## Results", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in source.test_metrics.items()] + [""]
    if source.per_class:
        columns = list(source.per_class[0])
        lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in source.per_class] + [
            ""
        ]
    for png in source.curves:
        if copy:
            (folder / "images").mkdir(exist_ok=True)
            shutil.copy2(png, folder / "images" / png.name)
        where = f"images/{png.name}" if copy else png.relative_to(folder).as_posix()
        lines += [f"![{png.stem}]({where})", ""]
    return lines
