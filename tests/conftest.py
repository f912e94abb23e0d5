"""Shared fixtures: a tiny random LLaMA, a byte-level tokenizer that fits its vocabulary, random ids.

Everything here builds in well under a second and needs neither network nor downloaded files.
"""

from __future__ import annotations

import pytest
import torch

TINY_VOCAB = 256


def make_tiny_llama(seed: int = 0, **overrides):
    """A randomly initialised LlamaForCausalLM (hidden 64, 2 layers, 4 heads / 2 KV heads, FFN 128,
    vocab 256) in eval mode; ``overrides`` go to LlamaConfig."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    kw.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


class ByteTokenizer:
    """UTF-8 bytes as token ids (0..255, so any text fits the tiny model). Callable like an HF
    tokenizer (``tok(text)["input_ids"]``, ``return_tensors="pt"``) and has ``encode``/``decode``."""

    pad_token_id = None
    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def __call__(self, text: str, return_tensors: str | None = None):
        ids = self.encode(text)
        if return_tensors == "pt":
            t = torch.tensor([ids], dtype=torch.long)
            return {"input_ids": t, "attention_mask": torch.ones_like(t)}
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def byte_tokenizer():
    return ByteTokenizer()


@pytest.fixture
def random_ids():
    """``random_ids(T, vocab=256, seed=0)`` -> LongTensor [1, T] of token ids, no tokenizer needed."""
    def make(T: int, vocab: int = TINY_VOCAB, seed: int = 0) -> torch.Tensor:
        return torch.randint(0, vocab, (1, T), generator=torch.Generator().manual_seed(seed))
    return make
