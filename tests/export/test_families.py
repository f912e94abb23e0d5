"""Every supported architecture (vq2trt.families), end to end on a tiny random model: quantize →
save → load → export (--ops fused and basic) → ONNX Runtime, logits equal to the HF model's for a
prefill and decode steps with the KV cache, greedy tokens equal to HF generate's; a float export
too. Sliding windows are smaller than the test sequences, so the exported masks are checked
against HF's, and the Gemma soft-caps are small enough to bend the scores and logits. Unsupported
architectures and options are refused by name."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch

from vq2trt.export.decoder import ExportDecoder
from vq2trt.families import UnsupportedModelError

from .conftest import calib_ids, sample_batch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# As test_ort_model: the same dequantized weights and float32 arithmetic on both sides, only the
# summation order differs.
ATOL = 1e-4
SEQ, PREFILL = 8, 6          # prefill 6 tokens, then 2 decode steps: past the window of 4 either way
WINDOW = 4
FAST = dict(vector_len=4, num_centroids=64, kmeans_iters=3)

# initializer_range 0.1 (not 0.02) spreads the logits, so greedy argmax has clear winners
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)


def make_tiny(name: str, seed: int = 0, **overrides):
    """A tiny random HF causal LM of family ``name``, features that family has switched on."""
    import transformers as T

    kw = dict(COMMON)
    if name == "llama3":
        # original context 64 makes the "llama3" rope scaling change the low frequencies
        kw.update(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64}, tie_word_embeddings=True)
        cls, cfg = T.LlamaForCausalLM, T.LlamaConfig
    elif name == "mistral":
        kw.update(sliding_window=WINDOW)
        cls, cfg = T.MistralForCausalLM, T.MistralConfig
    elif name == "qwen2":
        # layer 0 full, layer 1 sliding (max_window_layers); q/k/v carry a bias in Qwen2
        kw.update(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, tie_word_embeddings=True)
        cls, cfg = T.Qwen2ForCausalLM, T.Qwen2Config
    elif name == "qwen3":
        kw.update(head_dim=16)
        cls, cfg = T.Qwen3ForCausalLM, T.Qwen3Config
    elif name == "gemma2":
        kw.update(head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, attn_logit_softcapping=2.0,
                  final_logit_softcapping=1.5)
        cls, cfg = T.Gemma2ForCausalLM, T.Gemma2Config
    elif name == "gemma3":
        kw.update(head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, sliding_window_pattern=2,
                  rope_theta=1e6, rope_local_base_freq=100.0, final_logit_softcapping=1.5)
        cls, cfg = T.Gemma3ForCausalLM, T.Gemma3TextConfig
    elif name == "phi3":
        kw.update(sliding_window=WINDOW)         # Phi-3 mini's is 2047, on every layer as Mistral's
        cls, cfg = T.Phi3ForCausalLM, T.Phi3Config
    else:
        raise ValueError(name)
    kw.update(overrides)
    torch.manual_seed(seed)
    return cls(cfg(**kw)).eval()


NAMES = ["llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]
WINDOWED = {"mistral", "qwen2", "gemma2", "gemma3", "phi3"}


class Family:
    """One family's artefacts: the quantized model as loaded back, its exports, the float model."""

    def __init__(self, name, tmp):
        from vq2trt.config import QuantConfig
        from vq2trt.export.onnx_export import export_onnx
        from vq2trt.io import load_quantized, save_quantized
        from vq2trt.quantize import quantize

        self.name = name
        self.float = make_tiny(name)
        quantized = copy.deepcopy(self.float)
        config = QuantConfig(**FAST)
        quantize(quantized, config, calib_ids(n=4, seqlen=16), progress=False)
        self.quantized = quantized
        save_quantized(quantized, config, tmp / "ckpt")
        self.loaded = load_quantized(tmp / "ckpt")
        self.onnx = {ops: export_onnx(self.loaded, tmp / f"q-{ops}", ops=ops) for ops in ("fused", "basic")}
        self.float_onnx = export_onnx(self.float, tmp / "float", ops="fused")


@pytest.fixture(scope="module", params=NAMES)
def fam(request, tmp_path_factory):
    return Family(request.param, tmp_path_factory.mktemp(f"family-{request.param}"))


@pytest.fixture(scope="module")
def library():
    from vq2trt.runtime.library import get_library_path
    return get_library_path()


def _ids(seed=5):
    return sample_batch(seed=seed, seq=SEQ)


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.numpy()


def _prefill_decode_diff(dec, ref, ids) -> float:
    """max |Δlogit| against ``ref`` [B, T, V] over a PREFILL-token prefill and one-token decode steps."""
    B, T = ids.shape
    logits, past = dec.step(ids[:, :PREFILL].numpy(), np.ones((B, PREFILL)), np.tile(np.arange(PREFILL), (B, 1)),
                            dec.empty_past(B))
    diff = float(np.abs(logits - ref[:, :PREFILL]).max())
    for t in range(PREFILL, T):
        logits, past = dec.step(ids[:, t:t + 1].numpy(), np.ones((B, t + 1)), np.full((B, 1), t), past)
        diff = max(diff, float(np.abs(logits[:, 0] - ref[:, t]).max()))
    assert past[0].shape[2] == T
    return diff


def test_loaded_checkpoint_is_the_quantized_model(fam):
    ids = _ids()
    np.testing.assert_allclose(_hf_logits(fam.loaded, ids), _hf_logits(fam.quantized, ids), atol=1e-6)
    assert type(fam.loaded) is type(fam.float)


@pytest.mark.parametrize("ops", ["fused", "basic"])
def test_quantized_logits_match_hf_prefill_and_decode(fam, ops, library):
    from vq2trt.runtime.session import OnnxDecoder

    ids = _ids()
    ref = _hf_logits(fam.loaded, ids)
    diff = _prefill_decode_diff(OnnxDecoder(fam.onnx[ops]), ref, ids)
    print(f"{fam.name} quantized {ops}: max |dlogit| {diff:.2e}")
    assert diff < ATOL
    # quantization is visible: the test would not pass with the float weights
    assert np.abs(ref - _hf_logits(fam.float, ids)).max() > 10 * ATOL


@pytest.mark.parametrize("ops", ["fused", "basic"])
def test_greedy_tokens_equal_hf_generate(fam, ops, library):
    from vq2trt.runtime.session import OnnxDecoder

    prompt, n = [5, 17, 99, 3, 42], 8       # 13 tokens: decode runs past the window
    with torch.no_grad():
        hf = fam.loaded.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                 pad_token_id=0)[0, len(prompt):].tolist()
    assert OnnxDecoder(fam.onnx[ops]).generate(prompt, n).tokens == hf


def test_float_export_matches_hf(fam):
    from vq2trt.runtime.session import OnnxDecoder

    ids = _ids(seed=6)
    ref = _hf_logits(fam.float, ids)
    diff = _prefill_decode_diff(OnnxDecoder(fam.float_onnx), ref, ids)
    print(f"{fam.name} float fused: max |dlogit| {diff:.2e}")
    assert diff < ATOL


def test_graph_has_the_family_features(fam):
    """The fused graph: one Attention per layer (Gemma 2's with its softcap), the windows the
    model declares smaller than the test sequence (so the masks above were checked)."""
    from vq2trt.families import sliding_windows

    cfg = fam.float.config
    proto = onnx.load(str(fam.onnx["fused"] / "model.onnx"), load_external_data=False)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Attention"] == cfg.num_hidden_layers and ops["VQGemm"] > 0
    caps = {a.f for n in proto.graph.node if n.op_type == "Attention" for a in n.attribute if a.name == "softcap"}
    assert caps - {0.0} == ({2.0} if fam.name == "gemma2" else set())          # 0: no capping
    windows = sliding_windows(cfg)
    if fam.name in WINDOWED:
        assert min(w for w in windows if w) < PREFILL
        if fam.name not in ("mistral", "phi3"):    # alternating sliding and full layers
            assert None in windows
    else:
        assert windows == [None] * cfg.num_hidden_layers


def test_basic_graph_is_tensorrt_parsable(fam):
    """Soft-capping, Gemma's gelu-tanh MLP and q/k norms stay within the ops TensorRT imports."""
    from tests.export.test_tensorrt_graph import check_tensorrt_graph

    check_tensorrt_graph(fam.onnx["basic"])


def test_masks_and_rotary_follow_the_layer_types():
    """The features the family tests rest on make a difference on these configs: drop the window,
    a soft-cap, or Gemma 3's local rotary base and the decoder no longer gives HF's logits."""
    ids, mask, pos = _ids(), torch.ones(2, SEQ, dtype=torch.long), torch.arange(SEQ)[None].repeat(2, 1)

    def gap(model, **change):
        dec = ExportDecoder(model)
        for k, v in change.items():
            setattr(dec, k, v(dec))
        with torch.no_grad():
            return float((dec(ids, mask, pos, *dec.empty_past(2))[0] - model(ids).logits).abs().max())

    g2, g3, mi = make_tiny("gemma2"), make_tiny("gemma3"), make_tiny("mistral")
    assert gap(g2) < 1e-5 and gap(g3) < 1e-5 and gap(mi) < 1e-5
    assert gap(mi, windows=lambda d: [None] * len(d.windows)) > 0.1
    assert gap(g2, attn_softcap=lambda d: 0.0) > 0.01
    assert gap(g2, final_softcap=lambda d: 0.0) > 0.1
    assert gap(g3, _rope_keys=lambda d: ["full_attention"] * len(d._rope_keys)) > 0.01
    llama = make_tiny("llama3")
    default = 1.0 / (500000.0 ** (torch.arange(0, 16, 2).float() / 16))
    assert not torch.allclose(llama.model.rotary_emb.inv_freq, default)      # llama3 scaling is on


def test_gemma_embedding_scale_is_rounded_to_the_compute_dtype():
    """HF multiplies Gemma's embeddings by sqrt(hidden) cast to the weights' dtype: in bfloat16
    sqrt(48) = 6.93 becomes 6.9375, and the export's bfloat16 decoder gives the bfloat16 HF model's logits."""
    model = make_tiny("gemma2", hidden_size=48, head_dim=12)
    dec = ExportDecoder(copy.deepcopy(model), dtype="bfloat16")
    assert dec.embed_scale == 6.9375
    ids, mask, pos = _ids(), torch.ones(2, SEQ, dtype=torch.long), torch.arange(SEQ)[None].repeat(2, 1)
    with torch.no_grad():
        model.to(torch.bfloat16)
        assert torch.equal(dec.embed_tokens(ids) * dec.embed_scale, model.model.embed_tokens(ids))
        ref = model(ids).logits.float()
        got = dec(ids, mask, pos, *dec.empty_past(2))[0]
    # test_export_dtype's bound: 4 bfloat16 ulps at the largest logit (eager and the decoder round
    # at different points; measured 3.5 ulps here)
    assert float((got - ref).abs().max()) < 4 * 2**-7 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("name", ["phi3", "gemma2"])
def test_hessians_shared_by_linears_with_one_input(name):
    """q/k/v (and gate/up) read one input, so they share one Hessian; Phi-3's fused qkv_proj and
    gate_up_proj read that same input alone, so each gets its own, equal to X^T X of its input."""
    from vq2trt import quantize as qmod

    model = make_tiny(name)
    layers = qmod.decoder_layers(model)
    batches = qmod._capture_layer0_inputs(model, layers, calib_ids(4, 16), 2, torch.device("cpu"))
    linears = qmod.quantizable_linears(layers[0], "model.layers.0", [])
    H, _ = qmod._collect_hessians(layers[0], linears, batches, torch.device("cpu"))
    groups = Counter(id(h) for h in H.values())
    p = "model.layers.0"
    if name == "phi3":
        assert sorted(groups.values()) == [1, 1, 1, 1] and len(H) == 4
        x = torch.cat([layers[0].input_layernorm(h) for h, _ in batches]).reshape(-1, 64).double()
        Hq = H[f"{p}.self_attn.qkv_proj"].finalize().double()
        torch.testing.assert_close(Hq / Hq.trace(), x.T @ x / (x.T @ x).trace(), rtol=1e-4, atol=1e-7)
    else:
        shared = {f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")}
        assert len({id(H[n]) for n in shared}) == 1
        assert H[f"{p}.mlp.gate_proj"] is H[f"{p}.mlp.up_proj"] is not H[f"{p}.mlp.down_proj"]


def test_calibration_kwargs_follow_each_layers_attention_type():
    """quantize() runs HF's layers with captured kwargs: each layer gets its own type's mask and
    rotary (Gemma 3: sliding layers a windowed mask and the local base), not layer 0's."""
    from vq2trt import quantize as qmod

    model = make_tiny("gemma3")
    layers = qmod.decoder_layers(model)
    _, per_layer = qmod._capture_inputs(model, layers, calib_ids(4, 16), 2, torch.device("cpu"))
    assert per_layer[0] is not per_layer[1]                                   # sliding, full
    (cs, _), (cf, _) = per_layer[0][0]["position_embeddings"], per_layer[1][0]["position_embeddings"]
    assert not torch.allclose(cs, cf)
    # layer by layer with those kwargs gives the full model's hidden states
    ids = calib_ids(4, 16)[:2]
    with torch.no_grad():
        h = model.model.embed_tokens(ids)
        for i, layer in enumerate(layers):
            h = qmod._run_layer(layer, h, per_layer[i][0])
        torch.testing.assert_close(model.model.norm(h), model.model(ids).last_hidden_state)


# ---- refused architectures and options ----------------------------------------------------------

def test_unsupported_model_type_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig

    from vq2trt.config import QuantConfig
    from vq2trt.families import family_for
    from vq2trt.quantize import QuantizeError, quantize

    with pytest.raises(UnsupportedModelError, match=r"model_type 'gpt2' is not supported; supported model "
                                                    r"types: gemma2, gemma3_text, llama, mistral, phi3"):
        family_for(GPT2Config())
    made_up = make_tiny("mistral")
    made_up.config = LlamaConfig(**COMMON)
    made_up.config.model_type = "mistral_moe_v9"
    with pytest.raises(QuantizeError, match="model_type 'mistral_moe_v9' is not supported"):
        quantize(made_up, QuantConfig(**FAST), calib_ids(2, 8), progress=False)
    with pytest.raises(UnsupportedModelError, match="mistral_moe_v9"):
        ExportDecoder(made_up)
    with pytest.raises(UnsupportedModelError, match="gemma3'.*Gemma3ForCausalLM"):
        family_for(type("C", (), {"model_type": "gemma3"})())
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(
        tmp_path)
    from vq2trt.models import ModelLoadError, load_model
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel.*model_type 'gpt2' is not supported; supported"):
        load_model(tmp_path)


def test_unsupported_options_are_refused(tmp_path):
    from vq2trt.models import ModelLoadError, check_supported

    bidir = make_tiny("gemma3", use_bidirectional_attention=True)
    with pytest.raises(UnsupportedModelError, match="Gemma 3: use_bidirectional_attention is not supported"):
        ExportDecoder(bidir)
    with pytest.raises(ModelLoadError, match="use_bidirectional_attention"):
        check_supported(bidir)
    longrope = make_tiny("phi3", rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
        "original_max_position_embeddings": 128})
    with pytest.raises(UnsupportedModelError, match="Phi-3: rope type 'longrope'"):
        ExportDecoder(longrope)
    partial = make_tiny("phi3", rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "partial_rotary_factor": 0.5})
    with pytest.raises(UnsupportedModelError, match=r"partial rotary embedding \(rotary dim 8 of head_dim 16\)"):
        ExportDecoder(partial)
    fused = make_tiny("phi3")
    del fused.model.layers[1].mlp.gate_up_proj
    with pytest.raises(ModelLoadError, match=r"not a Phi-3 decoder: layer 1 has no Linear mlp.\{gate_up_proj\}"):
        check_supported(fused)
