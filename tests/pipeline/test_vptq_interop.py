"""microsoft/VPTQ checkpoints in and out (docs/vptq.md), held to VPTQ's own code: layers built and packed by
the vptq wheel's VQuantLinear / pack_index dequantize exactly like the imported VQWeight, our layers exported
to their layout dequantize in their code exactly like ours, and whole folders convert both ways, export to
ONNX and refuse what they cannot express without leaving a folder behind."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vq2trt.cli import main
from vq2trt.format import VQWeight, pack_indices
from vq2trt.interop.vptq import InteropError, pack_bits, unpack_bits, vptq_to_vqweight, vqweight_to_vptq
from vq2trt.reference import dequantize, vq_gemm

from .tiny import tiny_tokenizer
from .vptq_layout import (
    layer_conf,
    layer_tensors,
    load_vptq_folder,
    quantize_model,
    random_layer,
    save_vptq_folder,
    their_weight,
    vptq_modules,
)

# Both sides compute float32 from the same float16 values; only the matmul's summation order differs.
ATOL = 1e-4

LAYERS = {
    "plain": dict(N=10, K=32, v=4, k=16, norm=False, perm=False),
    "residual": dict(N=12, K=24, v=4, k=256, kr=16),
    "outliers": dict(N=10, K=36, v=4, k=16, vo=2, ko=8, n_out=4),
    "groups": dict(N=8, K=32, v=2, k=16, G=4, bias=True),
    "everything": dict(N=13, K=32, v=3, k=64, kr=4, vo=3, ko=16, n_out=5, G=3, bias=True),
    "k65536-r256": dict(N=16, K=24, v=8, k=65536, kr=256, G=2),
}


def _numpy(lin) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in layer_tensors(lin).items()}


def _import(lin, conf, **kw) -> VQWeight:
    return vptq_to_vqweight(conf, _numpy(lin), conf["out_features"], conf["in_features"], where="layer", **kw)


@pytest.fixture(scope="module")
def vptq():
    return vptq_modules()


@pytest.mark.parametrize("case", LAYERS)
def test_imported_layer_dequantizes_exactly_like_vptq(vptq, case):
    spec = dict(LAYERS[case])
    N, K = spec.pop("N"), spec.pop("K")
    conf = layer_conf(N, K, **spec)
    lin = random_layer(conf, seed=3)
    w = _import(lin, conf)
    ours, theirs = dequantize(w), their_weight(lin).numpy()
    assert ours.shape == theirs.shape == (N, K)
    np.testing.assert_array_equal(ours, theirs)
    x = torch.randn(3, 5, K, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = lin(x).numpy()
    np.testing.assert_allclose(vq_gemm(x.numpy(), w), y, atol=ATOL, rtol=1e-5)
    # and back: our export reproduces their tensors bit for bit
    back_conf, back = vqweight_to_vptq(w)
    theirs_t = _numpy(lin)
    if not conf["enable_perm"]:
        theirs_t["perm"] = np.arange(K, dtype=np.int16)       # we always write perm (identity here)
    assert sorted(back) == sorted(theirs_t)
    for name, t in back.items():
        np.testing.assert_array_equal(t.astype(np.float32) if t.dtype == np.float16 else t,
                                      theirs_t[name], err_msg=name)
    assert {k: v for k, v in back_conf.items() if k != "enable_perm"} == \
        {k: v for k, v in conf.items() if k != "enable_perm"}


def test_float16_layer_matches_vptq_within_its_rounding(vptq):
    # VPTQ's fp16 torch path rounds main + residual and q * scale + bias to fp16; vq2trt keeps float32
    conf = layer_conf(12, 32, v=4, k=64, kr=4, vo=2, ko=8, n_out=4, G=2, bias=True)
    lin = random_layer(conf, seed=5, dtype=torch.float16)
    w = _import(lin, conf)
    np.testing.assert_allclose(dequantize(w), their_weight(lin).float().numpy(), rtol=2e-3, atol=2e-3)


def test_bfloat16_and_float32_codebooks_convert_exactly_or_refuse(vptq):
    conf = layer_conf(8, 16, v=4, k=16)
    lin = random_layer(conf, seed=2)
    t = _numpy(lin)
    t["centroids.weight"] = t["centroids.weight"] + np.float32(1e-6)     # not float16-representable
    with pytest.raises(InteropError, match=r"layer\.centroids\.weight.*--allow-rounding"):
        vptq_to_vqweight(conf, t, 8, 16)
    w = vptq_to_vqweight(conf, t, 8, 16, allow_rounding=True)
    assert np.abs(w.codebook.astype(np.float32) - t["centroids.weight"].reshape(1, 16, 4)).max() < 1e-3


def test_float_typed_outlier_indices_read_as_their_bits(vptq):
    # indices_as_float layers keep the same uint16 bits in a float16 tensor
    conf = layer_conf(10, 36, v=4, k=16, vo=2, ko=8, n_out=4)
    lin = random_layer(conf, seed=4)
    t = _numpy(lin)
    t["outlier_indices"] = t["outlier_indices"].view(np.float16)
    w = vptq_to_vqweight({**conf, "indices_as_float": True}, t, 10, 36)
    assert w == _import(lin, conf)


@pytest.mark.parametrize("bits", [1, 3, 8, 12, 16, 17, 24, 31, 32])
def test_pack_bits_matches_ours_and_vptqs(vptq, bits):
    _, _, pack, _ = vptq
    g = np.random.default_rng(bits)
    vals = g.integers(0, 1 << bits, size=(5, 37), dtype=np.uint64)
    packed = pack_bits(vals, bits)
    np.testing.assert_array_equal(unpack_bits(packed, bits, 37), vals.astype(np.int64))
    if bits <= 16:
        np.testing.assert_array_equal(packed, pack_indices(vals.astype(np.int64), bits))
        main_bits, res = bits, None
    else:                                           # their merged layout: 16 main bits, the rest residual
        main_bits, res = 16, torch.from_numpy((vals >> np.uint64(16)).astype(np.int32)).to(torch.uint16)[None]
    main = torch.from_numpy((vals & np.uint64(0xFFFF)).astype(np.int32)).to(torch.uint16)[None]
    theirs = pack.pack_index(indice=main, index_bits=main_bits, res_indice=res, res_bits=bits - main_bits,
                             index_dtype=torch.uint16)
    np.testing.assert_array_equal(theirs[0].numpy(), packed)


def _random_vqweight(seed, *, N, K, v, k, kr=0, vo=0, ko=0, n_out=0, G=1, norm=True, perm=True, bias=False):
    g = np.random.default_rng(seed)
    C, R = K - n_out, math.ceil(N / v)
    return VQWeight.from_unpacked(
        out_features=N, in_features=K, perm=g.permutation(K) if perm else np.arange(K),
        indices=g.integers(0, k, (R, C)), codebook=g.standard_normal((G, k, v)),
        res_indices=g.integers(0, kr, (R, C)) if kr else None,
        res_codebook=0.1 * g.standard_normal((G, kr, v)) if kr else None,
        outlier_indices=g.integers(0, ko, (math.ceil(N / vo), n_out)) if n_out else None,
        outlier_codebook=2 * g.standard_normal((ko, vo)) if n_out else None,
        col_scale=1 + 0.2 * g.standard_normal(K) if norm else None,
        col_bias=0.01 * g.standard_normal(K) if norm else None,
        bias=g.standard_normal(N) if bias else None)


OURS = {
    "plain": dict(N=9, K=16, v=4, k=16, norm=False, perm=False),
    "residual-groups": dict(N=12, K=32, v=4, k=256, kr=4, G=4),
    "outliers-bias": dict(N=11, K=40, v=3, k=32, vo=2, ko=5, n_out=4, G=2, bias=True),
    "everything": dict(N=17, K=48, v=8, k=4096, kr=16, vo=4, ko=300, n_out=6, G=3, bias=True),
}


@pytest.mark.parametrize("case", OURS)
def test_exported_layer_dequantizes_exactly_in_vptq(vptq, case):
    vqlinear = vptq[0]
    w = _random_vqweight(7, **OURS[case])
    conf, t = vqweight_to_vptq(w)
    lin = vqlinear.VQuantLinear(**conf, enable_proxy_error=False, dtype=torch.float32)
    lin.load_state_dict({k: torch.from_numpy(v).float() if v.dtype == np.float16 else torch.from_numpy(v)
                         for k, v in t.items()})
    np.testing.assert_array_equal(their_weight(lin).numpy(), dequantize(w))
    x = torch.randn(4, w.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(lin.eval()(x).numpy(), vq_gemm(x.numpy(), w), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("case", OURS)
def test_export_then_import_is_the_identity(case):
    # needs no wheel: the two directions of vq2trt.interop.vptq undo each other
    w = _random_vqweight(9, **OURS[case])
    conf, t = vqweight_to_vptq(w)
    assert vptq_to_vqweight(conf, t, w.out_features, w.in_features) == w


@pytest.mark.parametrize("spec, why", [
    (dict(N=8, K=16, v=4, k=12), "not a power of two"),
    (dict(N=8, K=16, v=4, k=16, kr=3), "not a power of two"),
    (dict(N=8, K=18, v=4, k=16, G=4), "shorter last group"),
    (dict(N=8, K=20, v=4, k=16, vo=1, ko=4, n_out=2), "outlier vector length 1"),
    (dict(N=8, K=16, v=4, k=4, kr=16), "exceed the main"),
])
def test_export_refuses_what_vptq_cannot_hold(spec, why):
    with pytest.raises(InteropError, match=f"model.layers.0.mlp.up_proj: .*{why}"):
        vqweight_to_vptq(_random_vqweight(0, **spec), where="model.layers.0.mlp.up_proj")


@pytest.mark.parametrize("change, why", [
    (dict(vector_quant_dim="in"), "vector_quant_dim"),
    (dict(num_centroids=[-1, 12]), "not a power of two"),
    (dict(group_size=8), "group_num 1 x group_size 8 != in_features 16"),
    (dict(is_indice_packed=False), "is_indice_packed"),
    (dict(enable_norm=True), "weight_scale/weight_bias are missing"),
])
def test_import_refuses_inconsistent_layers(vptq, change, why):
    conf = layer_conf(8, 16, v=4, k=16, norm=False)
    t = _numpy(random_layer(conf))
    with pytest.raises(InteropError, match=why):
        vptq_to_vqweight({**conf, **change}, t, 8, 16, where="q")


# --- whole folders ---------------------------------------------------------------------------------
def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                        tie_word_embeddings=True, attention_bias=True)).eval()


def _vptq_model():
    """A tiny Llama whose every decoder Linear is a random VQuantLinear, a different format per kind of layer:
    q/k/v/o through shared_layer_config (by last name part, as VPTQ's loader looks them up), MLP per layer."""
    model = _tiny_llama()
    shared = {
        "q_proj": layer_conf(64, 64, v=4, k=64, kr=4, bias=True),
        "k_proj": layer_conf(32, 64, v=4, k=16, vo=2, ko=16, n_out=4, G=2, bias=True),
        "v_proj": layer_conf(32, 64, v=8, k=256, G=4, bias=True),
        "o_proj": layer_conf(64, 64, v=2, k=16, norm=False, perm=False, bias=True),
    }
    per_layer, confs = {}, {}
    for i in range(2):
        for tail, conf in shared.items():
            confs[f"model.layers.{i}.self_attn.{tail}"] = conf
        per_layer[f"model.layers.{i}.mlp.gate_proj"] = layer_conf(96, 64, v=6, k=32, kr=8, vo=3, ko=8, n_out=4, G=3)
        per_layer[f"model.layers.{i}.mlp.up_proj"] = layer_conf(96, 64, v=4, k=16 << i)
        per_layer[f"model.layers.{i}.mlp.down_proj"] = layer_conf(64, 96, v=4, k=256, kr=16, vo=2, ko=4, n_out=6,
                                                                  G=2)
    confs.update(per_layer)
    quantize_model(model, confs, seed=11)
    with torch.no_grad():           # random codebooks ~N(0,1): scale the layers down to a sane model
        for m in model.modules():
            if hasattr(m, "centroids"):
                m.centroids.weight.copy_((m.centroids.weight * 0.125).half().float())   # stays fp16-exact
    qc = {"quant_method": "vptq", "config_for_layers": per_layer, "shared_layer_config": shared}
    return model, qc, confs


@pytest.fixture(scope="module")
def folders(tmp_path_factory, vptq):
    root = tmp_path_factory.mktemp("vptq")
    model, qc, confs = _vptq_model()
    src = save_vptq_folder(model, root / "theirs", qc, tokenizer=tiny_tokenizer())
    assert main(["import", str(src), "--out", str(root / "ours")]) == 0
    return model, src, root / "ours", confs


IDS = torch.tensor([[1, 5, 17, 99, 3, 42, 7, 8], [2, 9, 60, 11, 4, 4, 30, 100]])


def test_imported_checkpoint_matches_vptq_model(folders):
    from vq2trt.io import load_quantized
    from vq2trt.nn import VQLinear

    theirs, _, ours_dir, confs = folders
    ours = load_quantized(ours_dir)
    vq = {n: m for n, m in ours.named_modules() if isinstance(m, VQLinear)}
    assert sorted(vq) == sorted(confs)
    for n, m in vq.items():
        np.testing.assert_array_equal(dequantize(m.to_vqweight()), their_weight(theirs.get_submodule(n)).numpy(),
                                      err_msg=n)
    with torch.no_grad():
        np.testing.assert_allclose(ours(IDS).logits.numpy(), theirs(IDS).logits.numpy(), atol=ATOL, rtol=1e-4)
    cfg = json.loads((ours_dir / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "vq2trt"
    assert (ours_dir / "tokenizer.json").is_file()


def test_imported_checkpoint_exports_to_onnx_and_ort_matches(folders, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from vq2trt.io import load_quantized
    from vq2trt.runtime.library import get_library_path
    from vq2trt.runtime.session import OnnxDecoder

    get_library_path()          # fails (not skips) with "run make plugins" when the op library is missing
    _, _, ours_dir, _ = folders
    onnx_dir = tmp_path / "onnx"
    assert main(["export", str(ours_dir), "--out", str(onnx_dir)]) == 0
    with torch.no_grad():
        ref = load_quantized(ours_dir)(IDS).logits.numpy()
    np.testing.assert_allclose(OnnxDecoder(onnx_dir).logits(IDS.numpy()), ref, atol=ATOL, rtol=1e-4)


def test_export_vptq_round_trips_to_their_tensors_and_loads_in_their_code(folders, tmp_path):
    from safetensors.numpy import load_file

    from vq2trt.io import load_quantized

    _, src, ours_dir, confs = folders
    back = tmp_path / "back"
    assert main(["export-vptq", str(ours_dir), "--out", str(back)]) == 0
    a, b = load_file(str(src / "model.safetensors")), load_file(str(back / "model.safetensors"))
    for name, t in a.items():
        np.testing.assert_array_equal(b[name].astype(t.dtype) if b[name].dtype != t.dtype else b[name], t,
                                      err_msg=name)
    qc = json.loads((back / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "vptq" and sorted(qc["config_for_layers"]) == sorted(confs)
    assert qc["modules_to_not_convert"] == ["lm_head"]
    reloaded = load_vptq_folder(back)
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(IDS).logits.numpy(), load_quantized(ours_dir)(IDS).logits.numpy(),
                                   atol=ATOL, rtol=1e-4)


def test_our_quantized_checkpoint_exports_to_vptq(tiny_dirs, tmp_path, vptq):
    from vq2trt.io import load_quantized

    _, q, _ = tiny_dirs
    out = tmp_path / "vptq"
    assert main(["export-vptq", str(q), "--out", str(out)]) == 0
    with torch.no_grad():
        np.testing.assert_allclose(load_vptq_folder(out)(IDS).logits.numpy(), load_quantized(q)(IDS).logits.numpy(),
                                   atol=ATOL, rtol=1e-4)


# --- bad input: exit 2, the message names the file/tensor, no folder left ---------------------------
def _fails(argv, out, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*")), "a partial output folder was left"
    return err


@pytest.fixture
def broken(folders, tmp_path):
    """A fresh copy of their folder to damage."""
    import shutil

    _, src, _, _ = folders
    dst = tmp_path / "theirs"
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(folder, fn):
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / "model.safetensors"))
    fn(t)
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_import_missing_files(broken, tmp_path, capsys):
    out = tmp_path / "out"
    (broken / "model.safetensors").unlink()
    _fails(["import", str(broken), "--out", str(out)], out, capsys, "no *.safetensors")
    (broken / "config.json").unlink()
    _fails(["import", str(broken), "--out", str(out)], out, capsys, "config.json is missing")
    _fails(["import", str(tmp_path / "nowhere"), "--out", str(out)], out, capsys, "does not exist")


def test_import_wrong_quant_method(broken, tmp_path, capsys):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["quantization_config"]["quant_method"] = "gptq"
    (broken / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    _fails(["import", str(broken), "--out", str(out)], out, capsys, "config.json", "'gptq'", "'vptq'")


def test_import_index_out_of_range(broken, tmp_path, capsys):
    name = "model.layers.1.mlp.down_proj.outlier_indices"

    def bump(t):
        t[name][0, 2, 1] = 4                              # its outlier codebook has 4 entries
    _edit_tensors(broken, bump)
    out = tmp_path / "out"
    _fails(["import", str(broken), "--out", str(out)], out, capsys, name, "index 4", "4 entries")


def test_import_shape_mismatch(broken, tmp_path, capsys):
    name = "model.layers.0.mlp.up_proj.centroids.weight"

    def cut(t):
        t[name] = t[name][:, :-4].contiguous()
    _edit_tensors(broken, cut)
    out = tmp_path / "out"
    _fails(["import", str(broken), "--out", str(out)], out, capsys, name, "expected shape [1, 64]")


def test_import_layer_in_config_without_tensors(broken, tmp_path, capsys):
    def drop(t):
        for k in [k for k in t if k.startswith("model.layers.0.mlp.gate_proj.")]:
            del t[k]
    _edit_tensors(broken, drop)
    out = tmp_path / "out"
    _fails(["import", str(broken), "--out", str(out)], out, capsys, "model.layers.0.mlp.gate_proj",
           "centroids.weight' is missing")


def test_import_reads_sharded_and_bfloat16_folders(broken, folders, tmp_path):
    from safetensors.numpy import load_file as load_np
    from safetensors.torch import load_file, save_file

    t = load_file(str(broken / "model.safetensors"))
    (broken / "model.safetensors").unlink()
    names = sorted(t)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    cast = "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.centroids.weight"
    for f, part in halves.items():
        save_file({k: t[k].bfloat16() if k in cast else t[k] for k in part}, str(broken / f), metadata={"format": "pt"})
    (broken / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, part in halves.items() for k in part}}))
    assert main(["import", str(broken), "--out", str(tmp_path / "out")]) == 0
    got, ref = load_np(str(tmp_path / "out" / "model.safetensors")), load_np(str(folders[2] / "model.safetensors"))
    assert sorted(got) == sorted(ref)
    for k in ref:
        want = ref[k]
        if k == "model.embed_tokens.weight":         # bfloat16 widened back to float32, exactly
            want = t[k].bfloat16().float().numpy()
        elif k == "model.layers.0.self_attn.q_proj.codebook":
            want = t[cast[1]].bfloat16().half().numpy().reshape(want.shape)
        np.testing.assert_array_equal(got[k], want, err_msg=k)


def test_import_keeps_an_existing_folder_unless_overwrite(folders, tmp_path, capsys):
    _, src, _, _ = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    assert main(["import", str(src), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep").exists()
    assert main(["import", str(src), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep").exists() and (out / "model.safetensors").exists()


def test_export_vptq_refuses_a_layer_with_a_reason(tmp_path, capsys):
    from vq2trt.config import QuantConfig
    from vq2trt.io import save_quantized
    from vq2trt.quantize import quantize

    from .tiny import calib_ids, tiny_model

    model = tiny_model()
    cfg = QuantConfig(vector_len=4, num_centroids=12, kmeans_iters=2, block_size=32)
    quantize(model, cfg, calib_ids(2, 16), device="cpu", progress=False)
    save_quantized(model, cfg, tmp_path / "q")
    out = tmp_path / "vptq"
    _fails(["export-vptq", str(tmp_path / "q"), "--out", str(out)], out, capsys, "model.layers.0.",
           "num_centroids (k)=12 is not a power of two")
