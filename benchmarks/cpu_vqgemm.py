"""CPU speed of VQGemm (libvq2trt_ort.so) against ONNX Runtime's MatMulNBits and float MatMul.

One run prints one table: a chain of LAYERS Linear layers DIM x DIM (bigger than the last-level
cache, so every layer streams its weights from memory), batch 1, in ONNX Runtime on the CPU EP
with 2 intra-op threads, sequential execution, graph optimisation on. Per row: median ms per
chain over RUNS runs after warm-up (rows one after another: compare within a run), the weight bytes
it streams (all-in: indices, codebooks, perm, scales) divided by that time, and the ratios to
MatMulNBits 4-bit and to the 2-bit memory floor (the float32 chain's bandwidth at 2 bits/weight).
VQ2TRT_ISA caps vq2trt's kernels (MLAS keeps its own choice); the header names the CPU and ISA.

    .venv/bin/python benchmarks/cpu_vqgemm.py [--layers 16] [--dim 4096] [--runs 30] [--threads 2] [--rows 1]

With --shapes 192x576,1536x576,... (N x K, e.g. a model's projections) each shape is timed as a fan
instead (N as a sum, e.g. 576+192+192x576 for q/k/v, makes each VQGemm element one VQGemmMulti node
of those weights, export --fuse-projections, with one output holding theirs side by side, as the
attention reads q/k/v, and the other ops one weight of the sum): LAYERS nodes of that shape reading
one x (so the weights stream from memory as in a decode step), µs per node for the default format
at level 4, with VQ2TRT_DENSE4=1, MatMulNBits 4-bit with block 32 (ORT GenAI's int4 models) and
float32 MatMul; sessions one after another, ROUNDS rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from vq2trt.config import index_bits
from vq2trt.export.op import DOMAIN, OP_TYPE, OP_VERSION, attributes, weight_inputs
from vq2trt.format import VQWeight, packed_words


def random_vq(rng, n: int, k_in: int, v: int, k: int, k_res: int = 0) -> VQWeight:
    """A VQ weight with random indices, packed directly: with k = 2^b every bit pattern is a
    valid index and C·b is a multiple of 32 here, so random words are a valid packing.
    k_res > 0 adds a residual codebook of that many entries (same vector length)."""
    def words(kk):
        b = index_bits(kk)
        assert (1 << b) == kk and k_in * b % 32 == 0
        shape = (-(-n // v), packed_words(k_in, b))
        return rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32).view(np.int32)

    res = dict(res_indices=words(k_res), res_codebook=(rng.standard_normal((1, k_res, v)) * 0.005).astype(np.float16)) \
        if k_res else {}
    return VQWeight(out_features=n, in_features=k_in, num_outlier_cols=0,
                    perm=rng.permutation(k_in).astype(np.int32), indices=words(k),
                    codebook=(rng.standard_normal((1, k, v)) * 0.02).astype(np.float16), **res)


def fan_model(kind: str, rng, layers: int, n, k_in: int):
    """LAYERS nodes of one N x K weight each, all reading x [M, K]; outputs o0 .. o{LAYERS-1}.
    n may be a list (e.g. q, k, v widths): VQGemm then makes one VQGemmMulti node of those weights
    per fan element (export --fuse-projections), the other ops one weight of their sum."""
    from onnx import TensorProto, helper, numpy_helper
    if not isinstance(n, int) and len(n) == 1:
        n = n[0]
    if not isinstance(n, int):
        if kind != "vq":
            return fan_model(kind, rng, layers, sum(n), k_in)
        from vq2trt.export.multi_weight import fuse_projections
        nodes, inits = [], []
        for i in range(layers):
            nodes.append(helper.make_node("Identity", ["x"], [f"x{i}"]))   # one X per element: one group each
            parts = []
            for j, nj in enumerate(n):
                w = random_vq(rng, nj, k_in, 4, 256)
                names = []
                for name, a in weight_inputs(w).items():
                    inits.append(numpy_helper.from_array(np.ascontiguousarray(a), f"l{i}.{j}.{name}"))
                    names.append(f"l{i}.{j}.{name}")
                nodes.append(helper.make_node(OP_TYPE, [f"x{i}", *names], [f"o{i}.{j}"], domain=DOMAIN,
                                              **attributes(w, 4)))
                parts.append(f"o{i}.{j}")
            nodes.append(helper.make_node("Concat", parts, [f"o{i}"], axis=-1))
        outs = [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, ["m", sum(n)]) for i in range(layers)]
        graph = helper.make_graph(nodes, "fan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k_in])],
                                  outs, initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid(DOMAIN, OP_VERSION)])
        # One output, [Y_0 | Y_1 | ...], as the exporter gives GroupQueryAttention / CachedAttention
        # its packed q/k/v: the Concat goes.
        fused = fuse_projections(model)
        concat = {n.output[0]: list(n.input) for n in fused.graph.node if n.op_type == "Concat"}
        kept = []
        for node in fused.graph.node:
            if node.op_type == "Concat":
                continue
            if node.op_type == "VQGemmMulti":
                target = next(o for o, parts in concat.items() if parts == list(node.output))
                del node.output[:]
                node.output.append(target)
            kept.append(node)
        del fused.graph.node[:]
        fused.graph.node.extend(kept)
        return fused
    nodes, inits = [], []
    for i in range(layers):
        if kind == "vq":
            w = random_vq(rng, n, k_in, 4, 256)
            names = []
            for name, a in weight_inputs(w).items():
                inits.append(numpy_helper.from_array(np.ascontiguousarray(a), f"l{i}.{name}"))
                names.append(f"l{i}.{name}")
            nodes.append(helper.make_node(OP_TYPE, ["x", *names], [f"o{i}"], domain=DOMAIN, **attributes(w, 4)))
        elif kind == "nbits":
            nb = k_in // 32
            inits += [numpy_helper.from_array(rng.integers(0, 256, (n, nb, 16), dtype=np.uint8), f"l{i}.B"),
                      numpy_helper.from_array((rng.random(n * nb, dtype=np.float32) * 0.01), f"l{i}.s")]
            nodes.append(helper.make_node("MatMulNBits", ["x", f"l{i}.B", f"l{i}.s"], [f"o{i}"], domain="com.microsoft",
                                          K=k_in, N=n, bits=4, block_size=32, accuracy_level=4))
        else:
            inits.append(numpy_helper.from_array((rng.standard_normal((k_in, n)) * 0.02).astype(np.float32), f"l{i}.W"))
            nodes.append(helper.make_node("MatMul", ["x", f"l{i}.W"], [f"o{i}"]))
    outs = [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, ["m", n]) for i in range(layers)]
    graph = helper.make_graph(nodes, "fan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k_in])], outs,
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OP_VERSION),
                                                   helper.make_opsetid("com.microsoft", 1)])


def time_fans(args) -> None:
    """--shapes: one table, µs per node per shape and op (see the module docstring)."""
    import gc

    from machine import cpu_label
    rng = np.random.default_rng(0)
    ops = (("VQGemm v4-k256, level 4", "vq", None),
           ("VQGemm v4-k256, level 4, VQ2TRT_DENSE4=1", "vq", {"VQ2TRT_DENSE4": "1"}),
           ("MatMulNBits 4-bit g32, level 4", "nbits", None), ("MatMul float32", "float", None))
    print(f"{cpu_label()}; fans of {args.layers} nodes, M={args.rows}, {args.threads} intra-op threads, "
          f"{args.rounds} rounds x {args.runs} runs, median µs per node")
    print("| N x K | " + " | ".join(name for name, _, _ in ops) + " | Dense4 / MatMulNBits |")
    print("|---|" + "---|" * (len(ops) + 1))
    for shape in args.shapes.split(","):
        ns, k_in = shape.lower().split("x")
        n, k_in = [int(v) for v in ns.split("+")], int(k_in)
        models = [(fan_model(kind, rng, args.layers, n, k_in), env) for _, kind, env in ops]
        feed = {"x": rng.standard_normal((args.rows, k_in)).astype(np.float32)}
        times = [[] for _ in ops]
        for _ in range(args.rounds):
            for i, (model, env) in enumerate(models):
                sess = make_session(model, args.threads, env)
                for _ in range(5):
                    sess.run(None, feed)
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    times[i].append((time.perf_counter() - t0) / args.layers * 1e6)
                del sess
                gc.collect()
        med = [statistics.median(t) for t in times]
        print(f"| {ns} x {k_in} | " + " | ".join(f"{t:.1f}" for t in med) + f" | {med[1] / med[2]:.2f} |", flush=True)


def chain_model(nodes, inits, dim: int, extra_opsets=()):
    from onnx import TensorProto, helper
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["m", dim])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, ["m", dim])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *extra_opsets])


def vq_chain(rng, layers, dim, v, k, level, k_res=0):
    from onnx import helper, numpy_helper
    nodes, inits, nbytes = [], [], 0
    for i in range(layers):
        w = random_vq(rng, dim, dim, v, k, k_res)
        names = []
        for name, a in weight_inputs(w).items():
            inits.append(numpy_helper.from_array(np.ascontiguousarray(a), f"l{i}.{name}"))
            names.append(f"l{i}.{name}")
        nbytes += w.stored_bits() // 8
        nodes.append(helper.make_node(OP_TYPE, [f"h{i}", *names], [f"h{i + 1}"], domain=DOMAIN,
                                      **attributes(w, level)))
    return chain_model(nodes, inits, dim, [helper.make_opsetid(DOMAIN, OP_VERSION)]), nbytes


def nbits_chain(rng, layers, dim, bits, block=128, level=4):
    """com.microsoft.MatMulNBits: B uint8 [N, K/block, block·bits/8], scales float [N·K/block],
    zero points packed like B ([N, ceil(n_blocks·bits/8)])."""
    from onnx import helper, numpy_helper
    nodes, inits, nbytes = [], [], 0
    nb = dim // block
    for i in range(layers):
        B = rng.integers(0, 256, (dim, nb, block * bits // 8), dtype=np.uint8)
        scales = (rng.random(dim * nb, dtype=np.float32) * 0.01).astype(np.float32)
        zp = rng.integers(0, 256, (dim, -(-nb * bits // 8)), dtype=np.uint8)
        for name, a in (("B", B), ("scales", scales), ("zp", zp)):
            inits.append(numpy_helper.from_array(a, f"l{i}.{name}"))
        nbytes += B.nbytes + scales.nbytes + zp.nbytes
        nodes.append(helper.make_node("MatMulNBits", [f"h{i}", f"l{i}.B", f"l{i}.scales", f"l{i}.zp"], [f"h{i + 1}"],
                                      domain="com.microsoft", K=dim, N=dim, bits=bits, block_size=block,
                                      accuracy_level=level))
    return chain_model(nodes, inits, dim, [helper.make_opsetid("com.microsoft", 1)]), nbytes


def float_chain(rng, layers, dim):
    from onnx import helper, numpy_helper
    nodes, inits = [], []
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((dim, dim)) * 0.02).astype(np.float32), f"l{i}.W"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"l{i}.W"], [f"h{i + 1}"]))
    return chain_model(nodes, inits, dim), layers * dim * dim * 4


def make_session(model, threads: int, env: dict | None = None):
    """env: variables set while the session is created (the kernels read VQ2TRT_* at prepack)."""
    import onnxruntime as ort
    from machine import environment

    from vq2trt.runtime.library import session_options
    with environment(env or {}):
        return ort.InferenceSession(model.SerializeToString(), session_options(intra_op_threads=threads),
                                    providers=["CPUExecutionProvider"])


def time_session(sess, dim: int, rows: int, runs: int, warmup: int = 5) -> float:
    """Median ms per chain. Rows are timed one after another: with every session alive and turns
    taken run by run or in blocks, all rows ran 2-3x slower here (idle pools' spinning threads)."""
    feed = {"h0": np.random.default_rng(1).standard_normal((rows, dim)).astype(np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1, help="activation rows M (1: decode; more: prefill)")
    ap.add_argument("--shapes", help="N x K list (e.g. 192x576,1536x576): time fans of these shapes instead")
    ap.add_argument("--rounds", type=int, default=3, help="with --shapes: rounds over the sessions")
    args = ap.parse_args(argv)
    if args.shapes:
        return time_fans(args)
    rng = np.random.default_rng(0)
    rows = []
    for label, v, k, kr in (("v4-k256 (default)", 4, 256, 0), ("v3-k512 (--target-bits' step up)", 3, 512, 0),
                            ("v4-k16-r16 (AVX2 vpshufb)", 4, 16, 16), ("v2-k16 (CPU-friendly)", 2, 16, 0)):
        for level in (0, 4):
            rows.append((f"VQGemm {label}, accuracy_level {level}",
                         lambda v=v, k=k, kr=kr, level=level: vq_chain(rng, args.layers, args.dim, v, k, level, kr),
                         None))
        if k == 256:  # the opt-in dense 4-bit decode form (plugins/core/src/internal.h: Dense4)
            rows.append((f"VQGemm {label}, accuracy_level 4, VQ2TRT_DENSE4=1",
                         lambda v=v, k=k: vq_chain(rng, args.layers, args.dim, v, k, 4), {"VQ2TRT_DENSE4": "1"}))
        if kr:  # AVX2's one-pass main + residual kernel, opt-in (plugins/core/src/prepack.cpp)
            rows.append((f"VQGemm {label}, accuracy_level 4, VQ2TRT_PAIR=1",
                         lambda v=v, k=k, kr=kr: vq_chain(rng, args.layers, args.dim, v, k, 4, kr),
                         {"VQ2TRT_PAIR": "1"}))
    for bits in (4, 2):
        rows.append((f"MatMulNBits {bits}-bit g128, accuracy_level 4",
                     lambda bits=bits: nbits_chain(rng, args.layers, args.dim, bits), None))
    rows.append(("MatMul float32", lambda: float_chain(rng, args.layers, args.dim), None))
    import os

    from machine import cpu_label
    cap = os.environ.get("VQ2TRT_ISA")
    built, ms = [], []
    for name, build, env in rows:
        model, nbytes = build()
        ms.append(time_session(make_session(model, args.threads, env), args.dim, args.rows, args.runs))
        built.append((name, nbytes))
        del model
    floor = ms[-1] * 2.0 / 32.0      # the float32 chain's bandwidth, streaming 2 bits per weight
    nbits4 = ms[[b[0] for b in built].index("MatMulNBits 4-bit g128, accuracy_level 4")]
    print(f"{cpu_label()}{f' (vq2trt kernels capped: VQ2TRT_ISA={cap})' if cap else ''}; chain of {args.layers} "
          f"Linear {args.dim}x{args.dim}, M={args.rows}, {args.threads} intra-op threads, median of {args.runs} runs;"
          f" 2-bit floor {floor:.2f} ms (the float32 chain's GB/s at 2 bits per weight)")
    print("| op | bits/weight (all-in) | ms per chain | weight GB/s | x MatMulNBits 4-bit | x 2-bit floor |")
    print("|---|---|---|---|---|---|")
    for (name, nbytes), t in zip(built, ms):
        bpw = nbytes * 8 / (args.layers * args.dim * args.dim)
        print(f"| {name} | {bpw:.3f} | {t:.2f} | {nbytes / t / 1e6:.2f} | {t / nbits4:.2f} | {t / floor:.2f} |")

if __name__ == "__main__":
    main()
