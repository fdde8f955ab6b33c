"""Text generation for :class:`~lightning_recipes.CausalLM`: batched, left-padded prompts, EOS-aware."""

from __future__ import annotations

from typing import Any

import torch

from lightning_recipes.handshake import META_KEY, split_meta


@torch.no_grad()
def generate_texts(
    lm: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool = False,
    num_return_sequences: int = 1,
    return_full_text: bool = True,
    seed: int | None = None,
    eos_token_id: int | list[int] | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Continue each prompt with ``lm.model.generate``; see :meth:`CausalLM.generate` for the arguments.

    ``lm`` is a ``CausalLM`` (its ``model``, ``context_length``, ``device``, ``training``, ``train()`` and
    ``eval()`` are used); the global random state is left untouched.
    """

    if max_new_tokens < 1 or num_return_sequences < 1:
        raise ValueError(
            f"max_new_tokens and num_return_sequences must be >= 1, got {max_new_tokens}, "
            f"{num_return_sequences}"
        )
    if temperature <= 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 0):
        raise ValueError(
            f"Need temperature > 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}"
        )
    eos = eos_token_id if eos_token_id is not None else lm.model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos_ids) if eos_ids else 0)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad
    encoded = [tokenizer(p)["input_ids"] or [start] for p in prompts]  # an empty prompt starts at BOS
    width = max(len(ids) for ids in encoded)
    if lm.context_length is not None and width + max_new_tokens > lm.context_length:
        raise ValueError(
            f"Prompt ({width} tokens) + max_new_tokens={max_new_tokens} exceeds the model's "
            f"context length {lm.context_length}"
        )
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    options: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        options.update(temperature=temperature, top_k=top_k or 0, top_p=1.0 if top_p is None else top_p)
    was_training = lm.training
    lm.eval()
    try:
        with torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            output = lm.model.generate(
                input_ids=input_ids.to(lm.device),
                attention_mask=attention_mask.to(lm.device),
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_return_sequences,
                pad_token_id=pad,
                eos_token_id=sorted(eos_ids) or None,
                **options,
                **generate_kwargs,
            )
    finally:
        lm.train(was_training)
    texts = []
    for row, ids in enumerate(output[:, width:].tolist()):
        stop = next((i for i, token in enumerate(ids) if token in eos_ids), len(ids))
        text = tokenizer.decode(ids[:stop], skip_special_tokens=True)
        texts.append(prompts[row // num_return_sequences] + text if return_full_text else text)
    return texts


def continue_prompts(lm: Any, batch: Any, generation: dict[str, Any]) -> dict[str, Any]:
    """``CausalLM.predict_step``: continue the batch's ``meta["prompt"]`` with ``lm.generate``."""
    _, meta = split_meta(batch)
    prompts = meta.get("prompt")
    if prompts is None:
        raise ValueError(
            "CausalLM predicts continuations of prompts: give the data module a predict_file "
            f"(one prompt per line); this batch has no meta['prompt'] (meta: {sorted(meta)})"
        )
    options = {"max_new_tokens": 50, **generation, "return_full_text": False}
    texts = lm.generate(list(prompts), **options)
    n = int(options.get("num_return_sequences", 1))
    continuation = texts if n == 1 else [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
    return {"continuation": continuation, META_KEY: meta}
