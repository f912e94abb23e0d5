"""The deployment half of the CLI: export, run, compare (registered by cli.build_parser)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(a: argparse.Namespace) -> int:
    from vq2trt.cli import _load_any
    from vq2trt.export.onnx_export import export_onnx

    model, tok, quantized = _load_any(a.checkpoint, "cpu")
    out = export_onnx(model, a.out, accuracy_level=a.accuracy_level, overwrite=a.overwrite, tokenizer=tok,
                      source=a.checkpoint)
    import onnx

    proto = onnx.load(str(Path(out) / "model.onnx"), load_external_data=False)
    n_vq = sum(n.op_type == "VQGemm" for n in proto.graph.node)
    kind = f"{n_vq} VQGemm nodes (accuracy_level {a.accuracy_level})" if quantized else "float model"
    size = sum(f.stat().st_size for f in Path(out).iterdir()) / 2**20
    print(f"wrote {out}: ONNX opset {proto.opset_import[0].version}, {len(proto.graph.node)} nodes, {kind}, "
          f"{size:.1f} MiB")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from vq2trt.runtime.session import OnnxDecoder, RunError, load_tokenizer

    dec = OnnxDecoder(a.onnx_dir, threads=a.threads)
    tok = load_tokenizer(a.onnx_dir)
    if tok is None:
        raise RunError(f"{a.onnx_dir} has no tokenizer.json; export with a tokenizer to run text prompts")
    ids = tok.encode(a.prompt).ids
    eos = dec.info.get("eos_token_id")
    g = dec.generate(ids, a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed,
                     eos_token_id=eos)
    mode = "greedy" if a.temperature <= 0 else f"sampled (T={a.temperature}, top_k={a.top_k}, top_p={a.top_p})"
    print(f"{a.prompt}{tok.decode(g.tokens, skip_special_tokens=True)}")
    print(f"[{mode}] prompt {g.prompt_tokens} tokens, prefill {g.prefill_s * 1e3:.1f} ms, "
          f"{len(g.tokens)} new tokens, decode {g.decode_tokens_per_s:.1f} tokens/s "
          f"({a.threads or 'default'} threads)")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from vq2trt.runtime.compare import KL_LIMIT, TOLERANCES, compare
    from vq2trt.runtime.session import read_info

    info = read_info(a.onnx_dir)
    rows = compare(a.onnx_dir, checkpoint=a.checkpoint, float_onnx=a.float_onnx, threads=a.threads,
                   decode_steps=a.decode_steps)
    level = int(info.get("accuracy_level", 0))
    if level in TOLERANCES:
        rule = f"every element within atol {TOLERANCES[level]['atol']} or rtol {TOLERANCES[level]['rtol']}"
    else:
        rule = f"accuracy_level {level}: mean KL of next-token distributions <= {KL_LIMIT} nats"
    print(f"\npolygraphy comparison of {a.onnx_dir} (prefill + {a.decode_steps} decode steps; "
          f"pass vs reference: {rule})")
    print(f"| {'runner':22s} | {'against':20s} | {'max |err|':>10s} | {'mean |err|':>10s} | {'max rel':>8s} "
          f"| {'KL nats':>8s} | top-1 | result |")
    print(f"|{'-' * 24}|{'-' * 22}|{'-' * 12}|{'-' * 12}|{'-' * 10}|{'-' * 10}|-------|--------|")
    failed = False
    for r in rows:
        verdict = "info" if r.passed is None else ("PASS" if r.passed else "FAIL")
        failed |= r.passed is False
        print(f"| {r.a:22s} | {r.b:20s} | {r.max_abs:10.3g} | {r.mean_abs:10.3g} | {r.max_rel:8.2g} "
              f"| {r.kl:8.2g} | {r.top1:5.0%} | {verdict:6s} |")
    if not rows:
        print("nothing to compare: pass --checkpoint and/or --float-onnx")
    print("(vs the float export: the quantization error itself, reported, not judged)")
    return 1 if failed else 0


def add_parsers(sub) -> None:
    x = sub.add_parser("export", help="write an ONNX decoder with KV cache (VQGemm nodes for quantized Linears)")
    x.add_argument("checkpoint", help="vq2trt checkpoint folder (or an HF folder / .gguf for a float export)")
    x.add_argument("--out", required=True, help="folder to write (model.onnx + model.onnx.data + tokenizer)")
    x.add_argument("--accuracy-level", type=int, default=0, choices=(0, 4),
                   help="0: float32 VQGemm; 4: CPU kernels may use int8 activations (faster)")
    x.add_argument("--overwrite", action="store_true")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser("run", help="generate text with an exported model in ONNX Runtime")
    r.add_argument("onnx_dir")
    r.add_argument("--prompt", default="The capital of France is")
    r.add_argument("--max-new-tokens", type=int, default=32)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--top-k", type=int, default=0)
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, help="ORT intra-op threads")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="polygraphy accuracy comparison: ORT vs PyTorch reference (and float)")
    c.add_argument("onnx_dir")
    c.add_argument("--checkpoint", help="PyTorch reference (default: the checkpoint the export came from)")
    c.add_argument("--float-onnx", help="a float export of the same model, for the quantization error")
    c.add_argument("--decode-steps", type=int, default=2)
    c.add_argument("--threads", type=int)
    c.set_defaults(func=cmd_compare)
