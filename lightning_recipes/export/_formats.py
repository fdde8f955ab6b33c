"""The export formats: which family takes which, example inputs (from the run's data or made up), and the
writers (``save_pretrained`` for ``hf``/``timm``; ``torch.jit.trace`` and ``torch.onnx.export`` of the
module's forward)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_recipes import _compat
from lightning_recipes.export._source import ExportError, Source, _load_class

#: Formats each family can take; the first is its default.
FORMATS = {
    "image": ("timm", "torchscript", "onnx"),
    "text": ("hf", "torchscript", "onnx"),
    "lm": ("hf", "torchscript", "onnx"),
}
#: Largest allowed difference of probabilities between the checkpoint and the export, per format.
TOLERANCE = {"hf": 1e-4, "timm": 1e-4, "torchscript": 1e-4, "onnx": 1e-3}
#: The file each traced format writes.
MODEL_FILE = {"torchscript": "model.pt", "onnx": "model.onnx"}
#: Examples run through both models for the parity check.
EXAMPLES = 4
_TEXTS = ["a short example sentence.", "the second one, a little longer than the first.", "three", "and four"]


def check_format(source: Source, fmt: str | None, merge: bool) -> str:
    """``fmt`` or the family's default; a format the model cannot take is an :class:`ExportError`."""
    family, allowed = source.family, FORMATS[source.family]
    fmt = allowed[0] if fmt is None else fmt
    if fmt not in allowed:
        kind = {"image": "an image classifier", "text": "a text classifier", "lm": "a causal LM"}[family]
        raise ExportError(f"--format {fmt} does not take {kind}; it exports as {', '.join(allowed)}")
    if fmt in ("hf", "timm") and family != "lm" and source.module.peft_model is not None and not merge:
        library = "transformers" if fmt == "hf" else "timm"
        raise ExportError(
            f"--format {fmt} without --merge writes this classifier's adapter as a peft folder with its head "
            f"beside it (head.safetensors), which {library} does not load as one model: pass --merge (the "
            "adapter merged into its base weights), or --format torchscript/onnx"
        )
    return fmt


def activation(source: Source) -> str:
    """How outputs become probabilities: ``softmax`` (multi-class, LM), ``sigmoid`` (multi-label) or
    ``none`` (regression)."""
    task = getattr(source.module, "task", "multiclass")
    return {"multilabel": "sigmoid", "regression": "none"}.get(task, "softmax")


def probabilities(logits: Tensor, how: str) -> Tensor:
    logits = logits.float()
    return logits.softmax(-1) if how == "softmax" else logits.sigmoid() if how == "sigmoid" else logits


def input_names(source: Source) -> list[str]:
    if source.family == "image":
        return ["images"]
    if source.family == "lm":
        return ["input_ids", "attention_mask"]
    return list(source.module.input_names)


def example_inputs(source: Source, n: int = EXAMPLES) -> tuple[dict[str, Tensor], str]:
    """``({input name: tensor}, where they come from)``: the first ``n`` test (else validation) examples of
    the run's data module, else made-up inputs of the right shape (images) or vocabulary (texts).

    Sets ``source.data_config`` for an image classifier: the transform the run's data module applied
    (its ``image_size`` and ``data_config`` over the model's), else the model's.
    """
    names = input_names(source)
    dm = _data_module(source)
    if source.family == "image":
        source.data_config = dict(dm.resolved_data_config() if dm is not None else source.module.data_config)
    if dm is not None:
        try:
            batch = _first_batch(source, dm)
            if source.family == "image":
                batch = {"images": batch}
            inputs = {k: batch[k][:n].contiguous() for k in names if k in batch}
            if "input_ids" in inputs and "attention_mask" not in inputs and "attention_mask" in names:
                inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            if len(inputs) == len(names) and next(iter(inputs.values())).shape[0] >= 2:
                return {k: inputs[k] for k in names}, f"{len(inputs[names[0]])} examples of the run's data"
        except Exception as exc:  # the data moved or needs the network: made-up inputs still check parity
            print(f"export: the run's data gives no examples ({type(exc).__name__}: {exc}); made-up inputs")
    return _made_up(source, names, n), f"{n} made-up inputs"


def _data_module(source: Source) -> Any:
    """The run's data module, built from its recipe and handed the model's input spec, or ``None``."""
    data = source.config.get("data")
    if not (isinstance(data, dict) and data.get("class_path")):
        return None
    try:
        dm = _load_class(str(data["class_path"]))(**dict(data.get("init_args") or {}))
        dm.accept_input_spec(source.module.input_spec())
        return dm
    except Exception as exc:
        print(f"export: the run's data module does not build ({type(exc).__name__}: {exc}); made-up inputs")
        return None


def _first_batch(source: Source, dm: Any) -> Any:
    from lightning_recipes.handshake import split_meta

    for stage, loader in (("test", "test_dataloader"), ("validate", "val_dataloader")):
        try:
            dm.setup(stage)
            batch = next(iter(getattr(dm, loader)()))
        except Exception:
            continue
        return split_meta(batch)[0]
    raise RuntimeError("neither its test nor its validation split loads")


def _made_up(source: Source, names: list[str], n: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    module = source.module
    if source.family == "image":
        c, h, w = (source.data_config or module.data_config)["input_size"]
        return {"images": torch.randn(n, c, h, w, generator=generator)}
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "pad_token", None) is not None:
        enc = tokenizer(_TEXTS[:n], padding=True, truncation=True, max_length=32, return_tensors="pt")
        return {k: enc[k] if k in enc else torch.zeros_like(enc["input_ids"]) for k in names}
    vocab = module.backbone.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (n, 16), generator=generator)
    mask = torch.ones_like(ids)
    mask[1:, 12:] = 0  # some padding, so the mask matters
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {k: inputs[k] for k in names}


class _ImageForward(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: Tensor) -> Tensor:
        return self.module(images)


class _TextForward(nn.Module):
    def __init__(self, module: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.module, self.names = module, names

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.module({k: inputs[k] for k in self.names})


class _LMForward(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.module(input_ids, attention_mask)


def traceable(source: Source, merge: bool) -> nn.Module:
    """The module's forward with positional tensor inputs (in :func:`input_names` order), an adapter
    merged into a copy with ``merge``."""
    module = source.module
    if merge and getattr(module, "peft_model", None) is not None:
        from lightning_recipes.modules._adapters import merged_copies

        try:
            module = merged_copies(module.peft_model, module)[1]
        except ValueError as exc:  # an adapter method with no merge
            raise ExportError(f"--merge: {str(exc).rstrip('.')}") from exc
    module = module.eval()
    if source.family == "image":
        return _ImageForward(module).eval()
    if source.family == "lm":
        return _LMForward(module).eval()
    return _TextForward(module, input_names(source)).eval()


def write_format(source: Source, fmt: str, folder: Path, inputs: dict[str, Tensor], merge: bool) -> dict:
    """Write ``source.module`` in ``fmt`` into ``folder``; return what ``export.json`` records of it."""
    module = source.module
    if fmt in ("hf", "timm"):
        try:
            module.save_pretrained(folder, merge=merge)
        except ValueError as exc:  # a head or an adapter the format cannot take
            reason = str(exc).rstrip(".")
            raise ExportError(
                f"--format {fmt}: {reason}; --format torchscript or onnx take any head"
            ) from exc
        if fmt == "timm" and source.data_config and (folder / "config.json").is_file():
            _timm_data_config(folder / "config.json", source.data_config)
        return {}
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is not None:  # the preprocessing a user must apply, beside the traced model
        tokenizer.save_pretrained(str(folder))
    wrapper = traceable(source, merge)
    args = tuple(inputs.values())
    path = folder / MODEL_FILE[fmt]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values; parity checks the result
        if fmt == "torchscript":
            with _compat.jit_tracing_lightning_modules():
                traced = torch.jit.trace(wrapper, args, check_trace=False, strict=False)
            torch.jit.save(traced, str(path))
            return {}
        return _onnx(wrapper, args, list(inputs), path, source.family)


#: The oldest torch whose exporter (``dynamo=True``) converts the three families with the onnx extra's
#: onnxscript: torch 2.5 and 2.6 fail on batch norm ("'tuple' object has no attribute 'dtype'").
ONNX_MIN_TORCH = (2, 7)


def onnx_unavailable() -> str | None:
    """Why ``--format onnx`` cannot run here (a missing package, a torch too old), or ``None``."""
    from importlib.util import find_spec

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if find_spec(name) is None]
    if missing:
        return (
            f"--format onnx needs onnx, onnxscript and onnxruntime ({', '.join(missing)} not installed): "
            "pip install 'lightning-recipes[onnx]'"
        )
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < ONNX_MIN_TORCH:
        need = ".".join(map(str, ONNX_MIN_TORCH))
        return (
            f"--format onnx needs torch >= {need} (this is {torch.__version__}, whose ONNX exporter cannot "
            f"convert these models): pip install 'torch>={need}', or export with --format torchscript"
        )
    return None


def _onnx(wrapper: nn.Module, args: tuple, names: list[str], path: Path, family: str) -> dict:
    reason = onnx_unavailable()
    if reason:
        raise ExportError(reason)
    axes = {name: {0: "batch"} if family == "image" else {0: "batch", 1: "sequence"} for name in names}
    try:
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"} if family != "lm" else {0: "batch", 1: "sequence"}},
            dynamo=True,
            verbose=False,
            external_data=False,
        )
    except Exception as exc:
        raise ExportError(f"--format onnx: torch.onnx.export failed ({type(exc).__name__}: {exc})") from exc
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "dynamic_axes": {k: list(v.values()) for k, v in axes.items()}}


#: The pretrained_cfg entries timm's ``resolve_data_config`` reads to build the transform.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _timm_data_config(path: Path, data_config: dict[str, Any]) -> None:
    """Put the transform the run trained with into a timm folder's ``pretrained_cfg`` (timm's
    ``resolve_data_config(model=...)`` then gives it), in place of the architecture's defaults."""
    config = json.loads(path.read_text())
    cfg = config.setdefault("pretrained_cfg", {})
    cfg.update(
        {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items() if k in DATA_CONFIG_KEYS}
    )
    path.write_text(json.dumps(config, indent=2) + "\n")


def write_json(folder: Path, record: dict[str, Any]) -> None:
    (folder / "export.json").write_text(json.dumps(record, indent=2) + "\n")


def describe_inputs(inputs: dict[str, Tensor]) -> dict[str, Any]:
    """Each input's dtype and shape, its first axis (and a text's second) named: any size works there."""
    described = {}
    for k, v in inputs.items():
        shape: list[Any] = ["batch", *v.shape[1:]] if k == "images" else ["batch", "sequence", *v.shape[2:]]
        described[k] = {"shape": shape, "dtype": str(v.dtype).removeprefix("torch.")}
    return described


def label_record(source: Source) -> dict[str, Any]:
    """The output labels (the pretrained ones where the model is used as-is), a ``class_map``'s ids and
    the preprocessing: an image classifier's transform, a text model's ``max_length``."""
    module = source.module
    pre: dict[str, Any] = {}
    if source.data_config:
        pre = {k: list(v) if isinstance(v, tuple) else v for k, v in source.data_config.items()}
    elif getattr(module, "max_length", None):
        pre = {"max_length": module.max_length}
    if source.family == "lm":
        return {"outputs": "next-token logits (batch, sequence, vocabulary)", "preprocessing": pre}
    record: dict[str, Any] = {
        "task": module.task,
        "label_names": module.output_names or module.label_names,
        "preprocessing": pre,
    }
    if module.class_ids is not None:
        record["class_map"] = dict(zip(module.label_names, module.class_ids, strict=True))
    return record
