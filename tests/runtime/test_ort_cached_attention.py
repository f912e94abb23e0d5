"""vq2trt.CachedAttention against ONNX Runtime's own com.microsoft.GroupQueryAttention (the node
it replaces in a fused `--ops ort` export): same inputs, outputs and caches equal up to float
rounding, for a right-padded first prompt, decode steps, a cache grown from the past (vq2trt's
step API) and one shared with it (ORT GenAI's buffers, bound as both past and present), grouped
and ungrouped heads. Bad calls fail with a message naming the input."""

from __future__ import annotations

import numpy as np
import pytest

from .test_ort_vqgemm import session

ort = pytest.importorskip("onnxruntime")


def attention_model(op, H, KV, D, positions=64, free=False):
    """One attention node; free: every input dimension symbolic (bad shapes reach the kernel)."""
    from onnx import TensorProto, helper, numpy_helper

    angles = np.arange(positions)[:, None] * (10000.0 ** (-np.arange(D // 2) / (D // 2)))[None]
    inits = [numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
             numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin")]
    f, i32, i64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
    width, kv, d = ("w", "kv", "d") if free else ((H + 2 * KV) * D, KV, D)
    inputs = [helper.make_tensor_value_info("qkv", f, ["b", "s", width]),
              helper.make_tensor_value_info("pk", f, ["b", kv, "p", d]),
              helper.make_tensor_value_info("pv", f, ["b", kv, "p", d]),
              helper.make_tensor_value_info("seqlens", i32, ["b"]), helper.make_tensor_value_info("total", i32, []),
              helper.make_tensor_value_info("pos", i64, ["b", "s"])]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("out", "k", "v")]
    if op == "gqa":
        node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "pk", "pv", "seqlens", "total", "cos", "sin",
                                                        "pos"], ["out", "k", "v"], domain="com.microsoft",
                                num_heads=H, kv_num_heads=KV, do_rotary=1, rotary_interleaved=0, scale=D ** -0.5)
    else:
        node = helper.make_node("CachedAttention", ["qkv", "pk", "pv", "seqlens", "total", "cos", "sin", "pos"],
                                ["out", "k", "v"], domain="vq2trt", num_heads=H, kv_num_heads=KV, scale=D ** -0.5)
    graph = helper.make_graph([node], "attention", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1),
                                                   helper.make_opsetid("vq2trt", 1)])


def run(sess, feeds, shared):
    """Outputs (out, present_k, present_v); shared: present bound to copies of past's buffers."""
    if not shared:
        return sess.run(None, feeds)
    io = sess.io_binding()
    pk, pv = feeds["pk"].copy(), feeds["pv"].copy()
    for k, v in feeds.items():
        io.bind_cpu_input(k, pk if k == "pk" else pv if k == "pv" else v)
    io.bind_output("out")
    io.bind_output("k", "cpu", 0, np.float32, list(pk.shape), pk.ctypes.data)
    io.bind_output("v", "cpu", 0, np.float32, list(pv.shape), pv.ctypes.data)
    sess.run_with_iobinding(io)
    return io.copy_outputs_to_cpu()[0], pk, pv


def compare(want, got, valid_q, valid_kv):
    """Outputs at the valid query rows, caches at the valid positions, relative to their scale."""
    out_a, ka, va = want
    out_b, kb, vb = got
    for b, (nq, nkv) in enumerate(zip(valid_q, valid_kv)):
        assert np.allclose(out_b[b, :nq], out_a[b, :nq], rtol=1e-5, atol=1e-5 * np.abs(out_a).max()), f"row {b}"
        assert np.allclose(kb[b, :, :nkv], ka[b, :, :nkv], rtol=1e-5, atol=1e-6), f"row {b} keys"
        assert np.allclose(vb[b, :, :nkv], va[b, :, :nkv], rtol=0, atol=0), f"row {b} values"


@pytest.mark.parametrize("prompt", [7, 50], ids=["short", "long"])   # long: split over the thread pool
@pytest.mark.parametrize("shared", [False, True], ids=["grown", "shared"])
@pytest.mark.parametrize("heads", [(9, 3, 64), (4, 4, 32), (8, 1, 16)], ids=lambda h: f"H{h[0]}-KV{h[1]}-D{h[2]}")
def test_same_as_group_query_attention(library, heads, shared, prompt):
    check_against_gqa(library, heads, shared, prompt)


def checks_in_fresh_process(library, env, *cases):
    """check_against_gqa(library, *case) for each case in a new Python process with `env` added:
    the library reads its switches (VQ2TRT_ISA, VQ2TRT_ATTENTION_SPLIT) once per process."""
    import os
    import subprocess
    import sys

    code = "from tests.runtime.test_ort_cached_attention import check_against_gqa; " + "; ".join(
        f"check_against_gqa({library!r}, *{case!r})" for case in cases)
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_plain_cpp_path(library):
    """The loop other ISAs take (VQ2TRT_ISA=scalar)."""
    checks_in_fresh_process(library, {"VQ2TRT_ISA": "scalar"},
                            ((9, 3, 64), True, 50), ((9, 3, 64), True, 300, 100), ((4, 2, 32), False, 7))


@pytest.mark.parametrize("prompt,short", [(300, 297), (300, 100), (150, 147), (150, 40)],
                         ids=["level", "ragged", "level-64", "ragged-64"])
def test_split_decode(library, prompt, short):
    """Decode over >= 256 cached keys splits them into parts of 128 merged after, over 128-255
    into parts of 64 (attention.cpp); ragged: row 1 has no keys in the last parts, which must get
    no weight."""
    check_against_gqa(library, (9, 3, 64), True, prompt, short)


def test_split_off(library):
    """VQ2TRT_ATTENTION_SPLIT=0 (the A/B switch) keeps a long decode on the unsplit path, still
    equal to GroupQueryAttention."""
    checks_in_fresh_process(library, {"VQ2TRT_ATTENTION_SPLIT": "0"}, ((9, 3, 64), True, 300, 100))


def check_against_gqa(library, heads, shared, prompt, short=None):
    """A right-padded prompt (row 1: `short` tokens, default 3 fewer) and three decode steps,
    both ops on the same inputs."""
    H, KV, D = heads
    gqa, ours = session(attention_model("gqa", H, KV, D, positions=max(64, prompt + 9)), library), \
        session(attention_model("ours", H, KV, D, positions=max(64, prompt + 9)), library)
    rng = np.random.default_rng(D)
    B, S, cap = 2, prompt, prompt + 9
    lengths = np.array([S, S - 3 if short is None else short])       # row 1 right-padded
    past_len = cap if shared else 0
    feeds = {"qkv": rng.standard_normal((B, S, (H + 2 * KV) * D)).astype(np.float32),
             "pk": np.zeros((B, KV, past_len, D), np.float32), "pv": np.zeros((B, KV, past_len, D), np.float32),
             "seqlens": (lengths - 1).astype(np.int32), "total": np.array(S, np.int32),
             "pos": np.tile(np.arange(S), (B, 1)).astype(np.int64)}
    want, got = run(gqa, feeds, shared), run(ours, feeds, shared)
    compare(want, got, lengths, lengths)
    cache_k, cache_v = want[1], want[2]
    for _ in range(3):                                               # decode: one token per row
        lengths = lengths + 1
        feeds = {"qkv": rng.standard_normal((B, 1, (H + 2 * KV) * D)).astype(np.float32),
                 "pk": cache_k, "pv": cache_v, "seqlens": (lengths - 1).astype(np.int32),
                 "total": np.array(lengths.max(), np.int32), "pos": (lengths - 1)[:, None].astype(np.int64)}
        want, got = run(gqa, feeds, shared), run(ours, feeds, shared)
        compare(want, got, [1, 1], lengths)
        cache_k, cache_v = want[1], want[2]


def test_bad_calls_name_the_input(library):
    sess = session(attention_model("ours", 4, 2, 16, free=True), library)
    B, S = 1, 3
    good = {"qkv": np.zeros((B, S, 8 * 16), np.float32), "pk": np.zeros((B, 2, 0, 16), np.float32),
            "pv": np.zeros((B, 2, 0, 16), np.float32), "seqlens": np.array([2], np.int32),
            "total": np.array(3, np.int32), "pos": np.arange(3)[None].astype(np.int64)}
    sess.run(None, good)

    def bad(match, **change):
        with pytest.raises(Exception, match=match):
            sess.run(None, {**good, **change})

    bad(r"qkv's last dimension 120 must be", qkv=np.zeros((B, S, 120), np.float32))
    bad(r"past_key must be \[1, 2, past, 16\]", pk=np.zeros((B, 3, 0, 16), np.float32))
    bad(r"seqlens_k\[0\] = 5.*\[0, 2\]", seqlens=np.array([5], np.int32))
    bad(r"position 64 .*outside the rotary tables' 64 rows", pos=np.array([[0, 1, 64]], np.int64))
    bad(r"total_sequence_length 2 is less than the 3 new tokens", total=np.array(2, np.int32))
