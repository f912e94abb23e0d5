"""The deployment half of the CLI: export, run, compare, build-engine (registered by cli.build_parser)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(a: argparse.Namespace) -> int:
    from vq2trt.cli import _load_any
    from vq2trt.export.onnx_export import export_onnx

    model, tok, quantized = _load_any(a.checkpoint, "cpu")
    out = export_onnx(model, a.out, accuracy_level=a.accuracy_level, overwrite=a.overwrite, tokenizer=tok,
                      source=a.checkpoint, dtype=a.dtype, embedding=a.embedding, ops=a.ops, logits=a.logits,
                      fuse_projections=a.fuse_projections, fold_layer_ops=not a.keep_layer_ops)
    import onnx

    proto = onnx.load(str(Path(out) / "model.onnx"), load_external_data=False)
    n_vq = sum(n.op_type == "VQGemm" for n in proto.graph.node)
    multi = [n for n in proto.graph.node if n.op_type == "VQGemmMulti"]
    kind = f"{n_vq} VQGemm nodes (accuracy_level {a.accuracy_level})" if quantized else "float model"
    n_multi = sum(len(a.ints) for n in multi for a in n.attribute if a.name == "out_features")
    if multi:
        kind += f" and {len(multi)} VQGemmMulti nodes ({n_multi} weights)"
    size = sum(f.stat().st_size for f in Path(out).iterdir()) / 2**20
    print(f"wrote {out}: ONNX opset {proto.opset_import[0].version}, {len(proto.graph.node)} nodes, {kind}, {a.dtype}, "
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
                   decode_steps=a.decode_steps, trt=a.trt or False, trt_precision=a.trt_precision,
                   verbose=a.verbose)
    level = int(info.get("accuracy_level", 0))
    if level in TOLERANCES:
        rule = (f"every element within {TOLERANCES[level]['scale_atol']:g} x its output's largest |value| "
                f"or rtol {TOLERANCES[level]['rtol']:g}")
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


# `vq2trt build-engine` exit codes besides 0 (engine written, or --print-command) and 2 (bad input)
EXIT_NO_TENSORRT = 3


def cmd_build_engine(a: argparse.Namespace) -> int:
    import shlex
    import sys

    from vq2trt.runtime import trt
    from vq2trt.runtime.library import LibraryNotFound, _trt_candidates, get_trt_library_path

    lay = trt.load_layout(a.onnx_dir)                   # a folder that is not an export: exit 2
    shapes = trt.EngineShapes.for_target(a.target, max_batch=a.max_batch, max_seq=a.max_seq,
                                         max_context=a.max_context, opt_seq=a.opt_seq, opt_context=a.opt_context)
    a.precision = a.precision or trt.default_precision(lay)
    engine = Path(a.out) if a.out else trt.default_engine_path(a.onnx_dir, a.target, a.precision)
    if a.print_command:
        try:
            lib = Path(a.plugin_library) if a.plugin_library else get_trt_library_path()
        except LibraryNotFound:
            lib = _trt_candidates()[0]
            print(f"vq2trt: note: {lib.name} is not built yet (make plugins); the command names {lib}",
                  file=sys.stderr)
        kw = dict(plugin_library=lib, target=a.target, precision=a.precision, strongly_typed=a.strongly_typed,
                  shapes=shapes, workspace_mib=a.workspace_mib, info=lay)
        if a.polygraphy:
            cmd = trt.polygraphy_command(a.onnx_dir, engine=a.out, **kw)
        else:
            cmd = trt.trtexec_command(a.onnx_dir, engine, dynamic_plugins=a.dynamic_plugins,
                                      builder_optimization_level=a.builder_optimization_level, **kw)
        print(shlex.join(cmd))
        return 0
    try:
        trt.build_engine(a.onnx_dir, engine, plugin_library=a.plugin_library, target=a.target, precision=a.precision,
                         strongly_typed=a.strongly_typed, shapes=shapes, dynamic_plugins=a.dynamic_plugins,
                         workspace_mib=a.workspace_mib, builder_optimization_level=a.builder_optimization_level)
    except trt.TensorRTNotFound as e:
        print("vq2trt: TensorRT's Python package was not found, so no engine was built. On a machine with "
              "TensorRT (its bin/ holds trtexec) this command builds it:", file=sys.stderr)
        print(shlex.join(e.command))
        return EXIT_NO_TENSORRT
    return 0


def _build_engine_parser(sub) -> None:
    from vq2trt.runtime.trt import PRECISIONS, TARGET_DEFAULTS, TARGETS

    defaults = "\n".join(f"  {t:12s} batch {d.max_batch}, prefill {d.max_seq}, context {d.max_context}, "
                         f"workspace {d.workspace_mib} MiB ({d.note})" for t, d in TARGET_DEFAULTS.items())
    b = sub.add_parser(
        "build-engine", help="build a TensorRT engine (prefill + decode profiles) or print its trtexec command",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Builds a TensorRT engine from a `vq2trt export` folder with two optimization profiles:\n"
                    "  0 prefill: past 0, 1..max-seq new tokens\n"
                    "  1 decode:  1 new token, past 1..max-context-1\n"
                    "Needs libvq2trt_trt.so (`make plugins`) and, to build here, TensorRT's Python package;\n"
                    "without it the equivalent trtexec command is printed. Recipes: export/TENSORRT.md.",
        epilog=f"defaults per --target:\n{defaults}\n\n"
               "exit status:\n"
               "  0  engine written, or (--print-command) the command printed on stdout\n"
               "  2  bad input; the message is on stderr\n"
               f"  {EXIT_NO_TENSORRT}  TensorRT is not importable: no engine was built; stdout holds the trtexec\n"
               "     command that builds it (use --print-command to ask for the command on purpose)")
    b.add_argument("onnx_dir", help="folder written by `vq2trt export`")
    b.add_argument("--out", help="engine file (default: ONNX_DIR/model.TARGET.PRECISION.engine)")
    b.add_argument("--target", choices=TARGETS, default="datacenter", help="sizes and workspace defaults (below)")
    b.add_argument("--precision", choices=PRECISIONS,
                   help="fp16 (default; bf16 for a bfloat16 export), bf16 or fp32 (TF32 off). From a float32 export "
                        "fp16/bf16 build weakly typed (TensorRT 10 only); an export in the requested dtype "
                        "(`vq2trt export --dtype float16`) builds strongly typed")
    b.add_argument("--strongly-typed", action=argparse.BooleanOptionalAction, default=None,
                   help="strongly typed network: the graph's dtypes decide the precision (default: when the "
                        "export's dtype is the requested precision)")
    b.add_argument("--max-batch", type=int, help="largest batch")
    b.add_argument("--max-seq", type=int, help="most tokens in one prefill")
    b.add_argument("--max-context", type=int, help="most tokens of past + new (attention_mask length)")
    b.add_argument("--opt-seq", type=int, help="prefill length the kernels are tuned for")
    b.add_argument("--opt-context", type=int, help="decode context the kernels are tuned for")
    b.add_argument("--workspace-mib", type=int, help="TensorRT workspace pool (MiB)")
    b.add_argument("--builder-optimization-level", type=int, choices=range(6), metavar="0..5")
    b.add_argument("--plugin-library", help="libvq2trt_trt.so (default: $VQ2TRT_TRT_LIBRARY, then build/)")
    b.add_argument("--dynamic-plugins", action="store_true",
                   help="load the plugin through getCreators (trtexec --dynamicPlugins) and serialize the "
                        "library with the engine (--setPluginsToSerialize)")
    b.add_argument("--print-command", action="store_true", help="print the trtexec command and exit 0")
    b.add_argument("--polygraphy", action="store_true",
                   help="with --print-command: print the `polygraphy run` command instead")
    b.set_defaults(func=cmd_build_engine)


def add_parsers(sub) -> None:
    x = sub.add_parser("export", help="write an ONNX decoder with KV cache (VQGemm nodes for quantized Linears)")
    x.add_argument("checkpoint", help="vq2trt checkpoint folder (or an HF folder / .gguf for a float export)")
    x.add_argument("--out", required=True, help="folder to write (model.onnx + model.onnx.data + tokenizer)")
    x.add_argument("--accuracy-level", type=int, default=0, choices=(0, 4),
                   help="0: float32 VQGemm; 4: CPU kernels may use int8 activations (faster)")
    x.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="compute dtype of the graph and its KV cache (logits stay float32); float16/bfloat16 "
                        "for strongly typed TensorRT engines")
    x.add_argument("--embedding", default="float32", choices=("float32", "float16", "int8"),
                   help="stored form of the token embedding table: int8 rows with a float32 scale each (a "
                        "quarter of float32) or float16. With a tied float lm_head, int8 (with --ops fused) "
                        "stores one int8 table that the head also reads (ONNX Runtime MatMulNBits; +0.4%% "
                        "perplexity on SmolLM2); otherwise the head must be another tensor (quantize --head, "
                        "or an untied model)")
    x.add_argument("--ops", default="auto", choices=("auto", "fused", "ort", "basic"),
                   help="fused (float32 only): opset-23 RMSNormalization/RotaryEmbedding/Attention nodes, ~4x "
                        "fewer nodes, faster in ONNX Runtime; ort: fused with ONNX Runtime's contrib ops "
                        "(GroupQueryAttention, whose KV cache ORT GenAI shares between past and present, and "
                        "SkipSimplifiedLayerNormalization; batch rows padded on the right only, no sliding-window "
                        "models, positions up to max_position_embeddings); basic: opset-18 graph for TensorRT "
                        "(build-engine takes "
                        "only this); auto (default): fused for float32, basic for float16/bfloat16")
    x.add_argument("--logits", default="all", choices=("all", "last"),
                   help="all (default): logits at every position (perplexity, compare); last: the last "
                        "position only, what generation reads (a 128-token prefill skips 127 lm_head rows)")
    x.add_argument("--fuse-projections", action="store_true",
                   help="one VQGemmMulti node for the quantized Linears that read the same input (q/k/v, "
                        "gate/up), with the RMS norm before it and SwiGLU after gate/up folded in: fewer nodes "
                        "and thread-pool hand-offs; ONNX Runtime's CPU EP only (needs --ops fused or ort)")
    x.add_argument("--keep-layer-ops", action="store_true",
                   help="with --fuse-projections: leave the norms and SwiGLU as nodes of their own (then the "
                        "logits are the unfused export's bytes; folded, they differ by float rounding)")
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

    c = sub.add_parser("compare", help="polygraphy accuracy comparison: ORT (and TensorRT) vs PyTorch reference")
    c.add_argument("onnx_dir")
    c.add_argument("--checkpoint", help="PyTorch reference (default: the checkpoint the export came from)")
    c.add_argument("--float-onnx", help="a float export of the same model, for the quantization error")
    c.add_argument("--decode-steps", type=int, default=2)
    c.add_argument("--threads", type=int)
    c.add_argument("--trt", nargs="?", const="build", metavar="ENGINE",
                   help="also run TensorRT (needs tensorrt + polygraphy): an engine from `vq2trt build-engine`, "
                        "or no value to build one for the comparison")
    c.add_argument("--trt-precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="precision of the engine built for --trt (fp32: judged elementwise; else by KL)")
    c.add_argument("--verbose", action="store_true",
                   help="print polygraphy's own log (runner activity, per-output statistics) before the table")
    c.set_defaults(func=cmd_compare)

    _build_engine_parser(sub)
