"""Text generation for :class:`~lightning_recipes.CausalLM`: batched, left-padded prompts, EOS-aware,
sampling with its own seed; and the ``predict`` stage, which continues a file of prompts."""

from __future__ import annotations

from typing import Any

import torch

from lightning_recipes.handshake import META_KEY, split_meta


class Generation:
    """``generate`` and ``predict_step`` of a module with a ``transformers`` causal LM in ``self.model``,
    a tokenizer (``self._require_tokenizer()``), ``self.context_length`` and ``self.generation`` (the
    predict stage's options)."""

    @torch.no_grad()
    def generate(
        self,
        prompt: str | list[str],
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
        """Continue each prompt with ``transformers``' ``generate``; one string per prompt and sequence.

        Greedy by default; ``do_sample=True`` samples with ``temperature``, ``top_k`` (``None``: all
        tokens) and ``top_p`` (nucleus). Generation of a sequence stops at ``max_new_tokens`` or at
        its first EOS token (``eos_token_id``, default the model's), which is not part of the text.

        Args:
            prompt: a prompt or a list of prompts (batched, left-padded).
            max_new_tokens: most tokens added to each prompt.
            temperature, top_k, top_p, do_sample: sampling settings.
            num_return_sequences: continuations per prompt (consecutive in the result).
            return_full_text: prompt + continuation (default) or the continuation only.
            seed: seed for sampling; the global random state is left untouched.
            eos_token_id: token id(s) that end a sequence.
            **generate_kwargs: passed to ``model.generate`` (``repetition_penalty``, ``num_beams``...).

        Returns:
            ``len(prompts) * num_return_sequences`` strings, grouped by prompt.
        """
        tokenizer = self._require_tokenizer()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if max_new_tokens < 1 or num_return_sequences < 1:
            raise ValueError(
                f"max_new_tokens and num_return_sequences must be >= 1, got {max_new_tokens}, "
                f"{num_return_sequences}"
            )
        bad_top = (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 0)
        if temperature <= 0 or bad_top:
            raise ValueError(
                f"Need temperature > 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}"
            )
        eos = eos_token_id if eos_token_id is not None else self.model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        pad = tokenizer.pad_token_id
        pad = (min(eos_ids) if eos_ids else 0) if pad is None else pad
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad
        encoded = [tokenizer(p)["input_ids"] or [start] for p in prompts]  # an empty prompt starts at BOS
        width = max(len(ids) for ids in encoded)
        if self.context_length is not None and width + max_new_tokens > self.context_length:
            raise ValueError(
                f"Prompt ({width} tokens) + max_new_tokens={max_new_tokens} exceeds the model's "
                f"context length {self.context_length}"
            )
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        options: dict[str, Any] = {"do_sample": do_sample}
        if do_sample:
            options.update(temperature=temperature, top_k=top_k or 0, top_p=1.0 if top_p is None else top_p)
        was_training = self.training
        self.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                if seed is not None:
                    torch.manual_seed(seed)
                output = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=num_return_sequences,
                    pad_token_id=pad,
                    eos_token_id=sorted(eos_ids) or None,
                    **options,
                    **generate_kwargs,
                )
        finally:
            self.train(was_training)
        texts = []
        for row, ids in enumerate(output[:, width:].tolist()):
            stop = next((i for i, token in enumerate(ids) if token in eos_ids), len(ids))
            text = tokenizer.decode(ids[:stop], skip_special_tokens=True)
            texts.append(prompts[row // num_return_sequences] + text if return_full_text else text)
        return texts

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Continue each prompt of the batch (``batch["meta"]["prompt"]``, as
        :class:`~lightning_recipes.TextCorpusDataModule` gives its ``predict_file``) with the
        ``generation`` options: ``{"continuation": [text per prompt], "meta": {"prompt": [...]}}``
        (a list of texts per prompt with ``num_return_sequences`` > 1)."""
        _, meta = split_meta(batch)
        prompts = meta.get("prompt")
        if prompts is None:
            raise ValueError(
                "CausalLM predicts continuations of prompts: give the data module a predict_file "
                f"(one prompt per line); this batch has no meta['prompt'] (meta: {sorted(meta)})"
            )
        options = {"max_new_tokens": 50, **self.generation, "return_full_text": False}
        texts = self.generate(list(prompts), **options)
        n = int(options.get("num_return_sequences", 1))
        continuation = texts if n == 1 else [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
        return {"continuation": continuation, META_KEY: meta}
