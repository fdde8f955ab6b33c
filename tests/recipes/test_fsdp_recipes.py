"""A text and an LM recipe under TransformerFSDP on 2 CPU processes (slow): sharded for real.

Each run is ``FULL_SHARD`` over gloo, launched by ``lightning run`` (Lightning's launcher) or
``torchrun``, with activation checkpointing. As for DDP (``test_ddp_recipes.py``) the summary, run
directory and checkpoints appear once and the validation metrics of the best checkpoint, which FSDP
gathered on rank 0, equal those the checkpoint gives on one process without FSDP. The LoRA recipe's
checkpoint holds the adapter and head only. A run stopped after its first epoch resumes from its last
checkpoint (model, optimizer and scheduler state) to the same weights as a run that did not stop.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_ddp_recipes import (
    LIGHTNING,
    REPO,
    assert_same_validation,
    check_once,
    launch,
    lm_overrides,
    metrics,
    summary,
    validate_on_one_process,
)
from test_lm_recipes import (
    text_file,  # noqa: F401
    tiny_pretrained,  # noqa: F401  (fixtures)
)
from test_text_recipes import overrides as text_overrides
from test_text_recipes import tiny_bert_and_tsv  # noqa: F401

STRATEGY = {
    "class_path": "lightning_recipes.strategies.TransformerFSDP",
    "init_args": {"activation_checkpointing": True},
}
FSDP = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=2",
    "--trainer.num_nodes=1",
    f"--trainer.strategy={json.dumps(STRATEGY)}",
]
FAST = ["--trainer.limit_train_batches=3", "--trainer.max_epochs=2", "--stages=[fit, validate]"]

pytestmark = pytest.mark.slow


def test_text_lora_recipe_under_fsdp(tmp_path, tiny_bert_and_tsv, capsys) -> None:  # noqa: F811
    model_dir, data_dir = tiny_bert_and_tsv
    recipe = str(REPO / "recipes/text/sst2_minilm_lora_local.yaml")
    data = [*text_overrides(model_dir, data_dir), "--data.init_args.eval_batch_size=3"]  # 16 = 8 per rank
    proc = launch([LIGHTNING, "run", recipe, *FSDP, *FAST, *data], tmp_path)
    printed = check_once(proc)
    for noise in ("has both parameters with requires_grad", "rank0_only=False", "is_gradient_checkpointing"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    stored = torch.load(printed["Best checkpoint"], weights_only=False, map_location="cpu")
    assert stored["state_dict"] and all("lora_" in k or k.startswith("head.") for k in stored["state_dict"])
    one = validate_on_one_process(recipe, data, printed["Best checkpoint"], capsys)
    assert_same_validation(metrics(printed["Final metrics"]), one)


def test_lm_recipe_under_fsdp_with_torchrun_resumes_to_the_same_weights(
    tmp_path,
    text_file,  # noqa: F811
    tiny_pretrained,  # noqa: F811
    capsys,
) -> None:
    recipe = str(REPO / "recipes/lm/gpt2_mini_finetune_local.yaml")
    # one schedule for all three runs (else the stopped run's is sized for its 1 epoch, and restored)
    data = [
        *lm_overrides(tmp_path, text_file, tiny_pretrained),
        "--model.init_args.config={resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}",  # compared exactly
        "--model.init_args.lr_scheduler.init_args.total_steps=6",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

    def train(name: str, *args: str) -> subprocess.CompletedProcess:
        root = f"--trainer.default_root_dir={tmp_path / name}"
        return launch([*torchrun, LIGHTNING, "run", recipe, *FSDP, *FAST, *data, root, *args], tmp_path)

    straight = check_once(train("straight"))
    one = validate_on_one_process(recipe, data, straight["Best checkpoint"], capsys)
    assert_same_validation(metrics(straight["Final metrics"]), one)

    first = check_once(train("stopped", "--trainer.max_epochs=1"), epochs=1)
    resumed = summary(train("resumed", f"--ckpt_path={first['Last checkpoint']}").stdout)
    a = torch.load(straight["Last checkpoint"], weights_only=False, map_location="cpu")
    b = torch.load(resumed["Last checkpoint"], weights_only=False, map_location="cpu")
    assert a["global_step"] == b["global_step"] > 0
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, msg=key)
