"""A tiny LLaMA and a word-level tokenizer, built in seconds, for pipeline tests."""

from __future__ import annotations

import torch

TEXT = " ".join(
    f"the {a} {b} of layer {i} sends {c} tokens to the next block ." for i in range(60)
    for a, b, c in [("quick", "vector", "many"), ("small", "codebook", "few"), ("second", "order", "all")]
)


def tiny_model(seed: int = 0, vocab: int = 128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def tiny_tokenizer(text: str = TEXT, vocab: int = 128):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(text.split()))
    ids = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    assert len(ids) <= vocab
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_tiny(path, seed: int = 0):
    """An HF folder (weights + tokenizer) the CLI can load."""
    model, tok = tiny_model(seed), tiny_tokenizer()
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def calib_ids(n: int = 8, seqlen: int = 32, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seqlen), generator=g)


# 16-entry codebooks at v4 (1 bit per weight): coarse enough that there is a large error for distillation to remove.
COARSE = dict(vector_len=4, num_centroids=16, kmeans_iters=4, block_size=32)
