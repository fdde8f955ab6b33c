"""The core's constructors and data set-up use what they are given and nothing else: no network connection,
no look into a project folder beside the working directory, no zoo build (issue #20's first floor).

The check runs in a fresh interpreter with an audit hook (``sys.addaudithook``: every socket connection
and name lookup, every file opened or listed) and a wrapped ``os.stat`` (existence checks), with the Hub's
and W&B's offline variables unset, so it is the code and not the environment that keeps the network out.
The one network access a core constructor may make is the one the user asks for: the pretrained weights
of a Hub id (timm's and transformers' own download, through ``_hub.hub_call``); tests/test_hub.py covers
that path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tiny_text_models import NEGATIVE, POSITIVE, make_model
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_recipes.data.bpe import train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, sys, traceback
from pathlib import Path

watched = sys.argv[1]  # the folder beside the working directory a project lookup would read
seen = []

def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"):
        seen.append([event, repr(args[:2])[:200], "".join(traceback.format_stack(limit=12))])
    elif event in ("open", "os.listdir", "os.scandir") and args and str(args[0]).startswith(watched):
        seen.append([event, str(args[0])])

sys.addaudithook(hook)
stat = os.stat

def watched_stat(path, *args, **kwargs):
    if str(os.fspath(path) if not isinstance(path, int) else "").startswith(watched):
        seen.append(["os.stat", str(path)])
    return stat(path, *args, **kwargs)

os.stat = watched_stat

import torch
from lightning_recipes import (
    CausalLM, ImageClassifier, ImageDataModule, TextClassifier, TextCorpusDataModule, TextDataModule, connect,
)

given = json.loads(sys.argv[2])
done = []
image = ImageClassifier("test_resnet", pretrained=False, num_classes=3)
ImageClassifier("test_resnet", pretrained=given["weights"], num_classes=3)
ImageClassifier("test_resnet", pretrained=False, head="pretrained")
images = ImageDataModule(given["images"], batch_size=4, num_workers=0)
connect(image, images)
images.setup("fit")
done.append(tuple(image(next(iter(images.train_dataloader()))[0]).shape))

text = TextClassifier(given["bert"], num_classes=2)
texts = TextDataModule(train_file=given["csv"], val_file=given["csv"], text_column="text", batch_size=4,
                       cache_dir=given["cache"])
connect(text, texts)
texts.setup("fit")
batch = next(iter(texts.train_dataloader()))
done.append(tuple(text.logits_and_target(batch)[0].shape))

lm = CausalLM(given["gpt2"], tokenizer=given["tokenizer"])
corpus = TextCorpusDataModule(
    train_file=given["corpus"], val_file=given["corpus"], block_size=16, batch_size=2,
    cache_dir=given["cache"],
)
connect(lm, corpus)
corpus.setup("fit")
done.append(tuple(lm(next(iter(corpus.train_dataloader()))["input_ids"]).shape))
print(json.dumps({"seen": seen, "done": done}))
"""


def test_constructors_and_setup_open_no_connection_and_read_no_project_folder(
    tmp_path: Path, image_folder, write_corpus
) -> None:
    import timm

    project, beside = tmp_path / "project", tmp_path / "shared"
    project.mkdir()
    (beside / "weights").mkdir(parents=True)  # what a ../shared lookup would find
    weights = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), weights)
    rows = [f"{t},pos" for t in POSITIVE] + [f"{t},neg" for t in NEGATIVE]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    corpus = write_corpus(tmp_path / "corpus.txt")
    train_bpe_tokenizer([corpus], vocab_size=300, output_dir=tmp_path / "tok")
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(
            n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=300, bos_token_id=0, eos_token_id=0
        )
    ).save_pretrained(gpt2)
    given = {
        "weights": str(weights),
        "images": str(image_folder(splits=("train", "val"), per_class=2, size=32)),
        "bert": str(make_model(tmp_path / "bert")),
        "csv": str(tmp_path / "train.csv"),
        "gpt2": str(gpt2),
        "tokenizer": str(tmp_path / "tok"),
        "corpus": str(corpus),
        "cache": str(tmp_path / "cache"),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "WANDB_"))}
    env.pop("LIGHTNING_RECIPES_SHARED", None)
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(beside), json.dumps(given)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["seen"] == [], "\n".join(map(str, report["seen"]))  # no socket, no look beside cwd
    assert report["done"][0] == [4, 3]  # the image model ran on a batch of the folder
    assert report["done"][1] == [4, 2]
    assert report["done"][2][:2] == [2, 16] and report["done"][2][2] == 300
