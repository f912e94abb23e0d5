"""The decoder architectures vq2trt supports, each as one Family: what differs between them.

The quantizer runs HF's own decoder layers, so it needs only the Linear names; the exporter
(export/decoder.py) re-states attention, rotary, masks and norms, so it needs the rest. Everything
an architecture changes is a field here, and one ExportDecoder reads the fields: no per-model copy
of the decoder. A model_type or a config option not described here is refused with its name, so a
model is never exported with the wrong maths.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTN_OUT = "o_proj"


class UnsupportedModelError(ValueError):
    """A model (type or config option) vq2trt cannot quantize or export correctly; the message
    names what is missing."""


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    # self_attn Linears computing q, k, v: three, or one fused [q; k; v] Linear (Phi-3)
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    # mlp Linears; the MLP itself runs as HF's module, so a fused gate_up_proj needs nothing more
    mlp: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    offset_norm: bool = False        # RMSNorm scales by (1 + w), not w (Gemma)
    qk_norm: bool = False            # RMSNorm over head_dim of q and k before rotary (Qwen3, Gemma 3)
    sandwich_norm: bool = False      # norms after attention and around the MLP (Gemma 2/3)
    scaled_embedding: bool = False   # embeddings times sqrt(hidden) (Gemma)
    attn_softcap: bool = False       # tanh soft-capping of attention scores (Gemma 2)
    final_softcap: bool = False      # tanh soft-capping of the logits (Gemma 2/3)
    # where sliding windows come from: "none", "global" (config.sliding_window on every layer,
    # as Mistral and Phi-3 apply it) or "layer_types" (config.layer_types, window on "sliding_attention")
    windows: str = "none"
    rope_per_type: bool = False      # rotary frequencies per layer type (Gemma 3's local base)

    @property
    def projections(self) -> dict[str, tuple[str, ...]]:
        """Linear names per block of a decoder layer: {"self_attn": (...), "mlp": (...)}."""
        return {"self_attn": (*self.qkv, ATTN_OUT), "mlp": self.mlp}


FAMILIES = (
    Family("Llama", ("llama",)),                     # Llama 2/3.x (rope "llama3" is a static inv_freq), SmolLM2
    Family("Mistral", ("mistral",), windows="global"),
    Family("Qwen2", ("qwen2",), windows="layer_types"),     # q/k/v bias: plain Linear bias
    Family("Qwen3", ("qwen3",), qk_norm=True, windows="layer_types"),
    Family("Gemma 2", ("gemma2",), offset_norm=True, sandwich_norm=True, scaled_embedding=True,
           attn_softcap=True, final_softcap=True, windows="layer_types"),
    # HF's Gemma 3 attention does not pass attn_logit_softcapping on (transformers 5.24), so neither do we
    Family("Gemma 3", ("gemma3_text",), offset_norm=True, qk_norm=True, sandwich_norm=True, scaled_embedding=True,
           final_softcap=True, windows="layer_types", rope_per_type=True),
    Family("Phi-3", ("phi3",), qkv=("qkv_proj",), mlp=("gate_up_proj", "down_proj"), windows="global"),
)

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}

# rope types whose frequencies change with the sequence length (HF's dynamic_rope_update): the
# export computes cos/sin from one fixed inv_freq
_DYNAMIC_ROPE = ("dynamic", "longrope")


def supported_types() -> list[str]:
    return sorted(_BY_TYPE)


def family_for(config) -> Family:
    """The Family of an HF config (or of a model, through its .config)."""
    config = getattr(config, "config", config)
    model_type = getattr(config, "model_type", None)
    fam = _BY_TYPE.get(model_type)
    if fam is None:
        hint = " (the multimodal Gemma 3: load its text model as Gemma3ForCausalLM)" if model_type == "gemma3" else ""
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported{hint}; supported model types: "
                                    f"{', '.join(supported_types())}")
    return fam


def rope_types(config) -> list[str]:
    rp = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if "rope_type" in rp or "type" in rp:
        return [rp.get("rope_type", rp.get("type"))]
    return [v.get("rope_type", v.get("type", "default")) for v in rp.values() if isinstance(v, dict)] or ["default"]


def check_config(config) -> Family:
    """The Family of ``config``, after refusing options that family's support does not cover."""
    fam = family_for(config)
    if getattr(config, "use_bidirectional_attention", False):
        raise UnsupportedModelError(f"{fam.name}: use_bidirectional_attention is not supported (the export "
                                    "is a causal decoder with a KV cache)")
    dynamic = sorted(set(rope_types(config)) & set(_DYNAMIC_ROPE))
    if dynamic:
        raise UnsupportedModelError(f"{fam.name}: rope type {dynamic[0]!r} changes its frequencies with the "
                                    "sequence length; only static rope types (default, linear, llama3, yarn) "
                                    "are supported")
    if fam.windows == "layer_types":
        kinds = set(getattr(config, "layer_types", None) or ())
        unknown = sorted(kinds - {"full_attention", "sliding_attention"})
        if unknown:
            raise UnsupportedModelError(f"{fam.name}: layer type {unknown[0]!r} is not supported "
                                        "(only full_attention and sliding_attention)")
    return fam


def sliding_windows(config) -> list[int | None]:
    """Per decoder layer: the sliding window (a query sees the keys less than that many positions
    back, itself included: HF's ``kv_idx > q_idx - window``), or None for full attention."""
    fam = family_for(config)
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    if fam.windows == "none" or window is None:
        return [None] * n
    if fam.windows == "global":
        return [int(window)] * n
    types = getattr(config, "layer_types", None) or ["full_attention"] * n
    return [int(window) if t == "sliding_attention" else None for t in types]


def layer_types(config) -> list[str | None]:
    """Per decoder layer: the key of its rotary frequencies (None: the model's one rotary)."""
    if not family_for(config).rope_per_type:
        return [None] * config.num_hidden_layers
    return list(config.layer_types)
