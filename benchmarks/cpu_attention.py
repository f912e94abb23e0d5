"""CPU speed of vq2trt.CachedAttention against ONNX Runtime's GroupQueryAttention, the node it
replaces in fused `--ops ort` exports (export/cached_attention.py).

One run prints one table: a graph of LAYERS attention nodes of one decoder's shape (packed q/k/v,
rotary, a KV cache shared between past and present as ORT GenAI binds it), one decode step after
PAST cached tokens, or a first prompt of PROMPT tokens; each op's session in turn over ROUNDS
rounds of RUNS runs, median µs per node. VQ2TRT_ISA caps vq2trt's kernels.

    .venv/bin/python benchmarks/cpu_attention.py [--heads 9 --kv-heads 3 --head-size 64]
        [--past 150] [--prompt 128] [--layers 30] [--threads 2] [--rounds 5] [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def attention_graph(op: str, layers: int, H: int, KV: int, D: int, cap: int):
    from onnx import TensorProto, helper, numpy_helper

    angles = np.arange(cap)[:, None] * (10000.0 ** (-np.arange(D // 2) / (D // 2)))[None]
    inits = [numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
             numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin")]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("qkv", f, [1, "s", (H + 2 * KV) * D]),
              helper.make_tensor_value_info("seqlens", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total", TensorProto.INT32, []),
              helper.make_tensor_value_info("pos", TensorProto.INT64, [1, "s"])]
    nodes, outputs = [], []
    for i in range(layers):
        inputs += [helper.make_tensor_value_info(f"pk{i}", f, [1, KV, cap, D]),
                   helper.make_tensor_value_info(f"pv{i}", f, [1, KV, cap, D])]
        outs = [f"o{i}", f"k{i}", f"v{i}"]
        if op == "gqa":
            nodes.append(helper.make_node("GroupQueryAttention", ["qkv", "", "", f"pk{i}", f"pv{i}", "seqlens", "total",
                                                                  "cos", "sin", "pos"], outs, domain="com.microsoft",
                                          num_heads=H, kv_num_heads=KV, do_rotary=1, scale=D ** -0.5))
        else:
            nodes.append(helper.make_node("CachedAttention", ["qkv", f"pk{i}", f"pv{i}", "seqlens", "total", "cos",
                                                              "sin", "pos"], outs, domain="vq2trt",
                                          num_heads=H, kv_num_heads=KV, scale=D ** -0.5))
        outputs += [helper.make_tensor_value_info(o, f, None) for o in outs]
    graph = helper.make_graph(nodes, "attention", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1),
                                                   helper.make_opsetid("vq2trt", 1)])


def main() -> None:
    import onnxruntime as ort
    from machine import cpu_label

    from vq2trt.runtime.library import session_options

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--past", type=int, default=150, help="cached tokens before the decode step")
    ap.add_argument("--prompt", type=int, default=128, help="first-prompt length")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    H, KV, D = args.heads, args.kv_heads, args.head_size
    cap = max(args.past + 1, args.prompt) + 16
    rng = np.random.default_rng(0)
    cases = {"decode": (1, args.past + 1), "prompt": (args.prompt, args.prompt)}
    ops = {"GroupQueryAttention (ORT)": "gqa", "CachedAttention (vq2trt)": "ours"}
    sessions = {}
    for name, op in ops.items():
        so = session_options(intra_op_threads=args.threads)
        sessions[name] = ort.InferenceSession(attention_graph(op, args.layers, H, KV, D, cap).SerializeToString(), so)
    print(f"{cpu_label()}; {args.layers} nodes, heads {H}/{KV} x {D}, {args.threads} intra-op threads, "
          f"{args.rounds} rounds x {args.runs} runs, median µs per node")
    print("| case | " + " | ".join(ops) + " | ratio |")
    print("|---|" + "---|" * (len(ops) + 1))
    for case, (S, total) in cases.items():
        caches = {n: [rng.standard_normal((1, KV, cap, D)).astype(np.float32) for _ in range(2 * args.layers)]
                  for n in sessions}
        feeds = {"qkv": rng.standard_normal((1, S, (H + 2 * KV) * D)).astype(np.float32),
                 "seqlens": np.array([total - 1], np.int32), "total": np.array(total, np.int32),
                 "pos": np.arange(total - S, total)[None].astype(np.int64)}
        times = {n: [] for n in sessions}
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                io = sess.io_binding()
                for k, v in feeds.items():
                    io.bind_cpu_input(k, v)
                for i in range(args.layers):                    # past and present: one buffer each
                    pk, pv = caches[name][2 * i], caches[name][2 * i + 1]
                    io.bind_cpu_input(f"pk{i}", pk)
                    io.bind_cpu_input(f"pv{i}", pv)
                    io.bind_output(f"o{i}")
                    io.bind_output(f"k{i}", "cpu", 0, np.float32, list(pk.shape), pk.ctypes.data)
                    io.bind_output(f"v{i}", "cpu", 0, np.float32, list(pv.shape), pv.ctypes.data)
                for _ in range(3):
                    sess.run_with_iobinding(io)
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    sess.run_with_iobinding(io)
                    times[name].append((time.perf_counter() - t0) / args.layers * 1e6)
        med = [statistics.median(t) for t in times.values()]
        label = f"decode, {args.past} cached" if case == "decode" else f"first prompt of {S}"
        print(f"| {label} | " + " | ".join(f"{m:.1f}" for m in med) + f" | {med[1] / med[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
