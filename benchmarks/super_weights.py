"""Do quantized checkpoints keep SmolLM2's largest down_proj weights ("super weights")?

Yu et al. (2024) found a few scalars in early down_proj layers that make the model's massive
activations: losing one wrecks the model. This prints, per decoder layer, the --top largest |W|
of the float down_proj (row, column, value, multiple of the layer's RMS) and each checkpoint's
dequantized value at that place.

    python benchmarks/super_weights.py CKPT [CKPT ...] [--top 3] [--model GGUF_OR_DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="vq2trt checkpoint folders")
    p.add_argument("--model", help="the float model (default: SmolLM2-135M, fetched into --cache)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "vq2trt"))
    p.add_argument("--top", type=int, default=3)
    a = p.parse_args()

    from vq2trt.io import load_quantized
    from vq2trt.models import fetch_smollm2, load_model

    float_model, _ = load_model(a.model or str(fetch_smollm2(a.cache)))
    quantized = [dict(load_quantized(c).named_modules()) for c in a.checkpoints]
    floats = dict(float_model.named_modules())
    print("checkpoints: " + ", ".join(f"({i + 1}) {c}" for i, c in enumerate(a.checkpoints)))
    print(f"| layer | RMS | top {a.top} |W| of down_proj: [row, col] float -> (1) (2) ... |")
    print("|---|---|---|")
    for i in range(len(float_model.model.layers)):
        name = f"model.layers.{i}.mlp.down_proj"
        W = floats[name].weight.detach()
        rms = float(W.pow(2).mean().sqrt())
        deq = [q[name].weight_float().detach() for q in quantized]
        cells = []
        for j in W.abs().flatten().topk(a.top).indices.tolist():
            r, c = divmod(j, W.shape[1])
            cells.append(f"[{r},{c}] {float(W[r, c]):+.3f} ({abs(float(W[r, c])) / rms:.0f}x) -> "
                         + " ".join(f"{float(d[r, c]):+.3f}" for d in deq))
        print(f"| {i} | {rms:.4f} | " + "; ".join(cells) + " |")


if __name__ == "__main__":
    main()
