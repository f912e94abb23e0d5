"""perplexity against a hand computation on the tiny model; greedy generation against a manual loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from vq2trt.evaluate import EvalError, generate_greedy, perplexity


def _hand_ppl(model, ids, ctx, windows):
    nlls = []
    with torch.no_grad():
        for w in range(windows):
            x = ids[:, w * ctx:(w + 1) * ctx]
            logits = model(x).logits[0]
            nlls.append(F.cross_entropy(logits[:-1], x[0, 1:], reduction="none"))
    return math.exp(torch.cat(nlls).mean().item())


@pytest.mark.parametrize("windows, expected_windows", [(None, 3), (2, 2)])
def test_matches_hand_computation(tiny_llama, random_ids, windows, expected_windows):
    ctx = 16
    ids = random_ids(3 * ctx + 5)  # a trailing partial window is dropped
    r = perplexity(tiny_llama, ids, ctx=ctx, windows=windows, progress=False)
    assert r["windows"] == expected_windows and r["tokens"] == expected_windows * (ctx - 1)
    assert r["ppl"] == pytest.approx(_hand_ppl(tiny_llama, ids, ctx, expected_windows), rel=1e-5)
    assert r["nll"] == pytest.approx(math.log(r["ppl"]))


def test_accepts_1d_and_keeps_training_flag(tiny_llama, random_ids):
    ids = random_ids(40)
    tiny_llama.train()
    r = perplexity(tiny_llama, ids[0], ctx=20, progress=False)
    assert tiny_llama.training and r["windows"] == 2


@pytest.mark.parametrize("T, kw, message", [
    (10, dict(ctx=16), "text has 10 tokens, fewer than one window of 16"),
    (40, dict(ctx=16, windows=3), "asked for 3 windows of 16 tokens; the text's 40 tokens hold 2"),
    (40, dict(ctx=1), "context length must be >= 2"),
])
def test_too_short_or_bad_arguments(tiny_llama, random_ids, T, kw, message):
    with pytest.raises(EvalError, match=message):
        perplexity(tiny_llama, random_ids(T), progress=False, **kw)


def test_bad_shape(tiny_llama):
    with pytest.raises(EvalError, match=r"shape \[1, T\] or \[T\]; got \(2, 8\)"):
        perplexity(tiny_llama, torch.zeros(2, 8, dtype=torch.long), ctx=4, progress=False)


def test_generate_greedy_matches_argmax_loop(tiny_llama, byte_tokenizer):
    prompt, n = "hello", 6
    got = generate_greedy(tiny_llama, byte_tokenizer, prompt, max_new_tokens=n)
    ids = byte_tokenizer(prompt, return_tensors="pt")["input_ids"]
    eos = tiny_llama.generation_config.eos_token_id
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(tiny_llama(ids).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == eos:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert got == byte_tokenizer.decode(new)


def test_generate_needs_a_tokenizer(tiny_llama):
    with pytest.raises(EvalError, match="needs a tokenizer"):
        generate_greedy(tiny_llama, None, "hi")
