"""TensorRT recipes without TensorRT: optimization profiles from an export's vq2trt_onnx.json,
the trtexec / polygraphy command lines, the plugin library lookup, and export/TENSORRT.md, whose
commands must be the ones vq2trt.runtime.trt generates for SmolLM2-135M."""

from __future__ import annotations

import fnmatch
import re
import shlex
import sys
from pathlib import Path

import pytest

from vq2trt.runtime import trt
from vq2trt.runtime.session import RunError

DOC = Path(__file__).resolve().parents[2] / "export" / "TENSORRT.md"
LIB = "build/plugins/tensorrt/libvq2trt_trt.so"


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A float export of the tiny LLaMA (2 layers, 2 KV heads, head_dim 16): the real
    vq2trt_onnx.json and graph that engines are built from."""
    pytest.importorskip("onnxscript")
    from tests.conftest import make_tiny_llama
    from vq2trt.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("trt") / "onnx"
    export_onnx(make_tiny_llama(), out, ops="basic")
    return out


@pytest.fixture(scope="module")
def tiny_info(tiny_export):
    from vq2trt.runtime.session import read_info

    return read_info(tiny_export)


def _graph_inputs(folder: Path) -> dict[str, list]:
    import onnx

    g = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim]
            for i in g.input}


SHAPES = trt.EngineShapes(max_batch=4, max_seq=64, max_context=256, opt_batch=2, opt_seq=16, opt_context=100)


# --- profiles ---------------------------------------------------------------------------------


def test_profiles_name_every_graph_input_with_its_rank_and_static_dims(tiny_export, tiny_info):
    graph = _graph_inputs(tiny_export)
    profs = trt.profiles(tiny_info, SHAPES)
    assert list(profs) == ["prefill", "decode"]
    for prof in profs.values():
        assert list(prof) == list(graph)                      # every input, in graph order
        for name, (lo, opt, hi) in prof.items():
            dims = graph[name]
            assert len(lo) == len(opt) == len(hi) == len(dims), name
            for k, d in enumerate(dims):
                if isinstance(d, int) and d > 0:              # static in the graph: fixed in the profile
                    assert lo[k] == opt[k] == hi[k] == d, (name, k)
        trt.check_profile(prof)


def test_prefill_and_decode_profiles(tiny_info):
    p, d = trt.profiles(tiny_info, SHAPES).values()
    H, D = tiny_info["num_key_value_heads"], tiny_info["head_dim"]
    key = "past_key_values.1.value"
    for prof in (p, d):
        for lo, opt, hi in prof.values():
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
            assert (lo[0], opt[0], hi[0]) == (1, 2, 4)        # batch 1..max_batch, opt opt_batch
    # prefill: an empty cache, 1..max_seq new tokens, the mask as long as the tokens
    assert p[key] == ((1, H, 0, D), (2, H, 0, D), (4, H, 0, D))
    assert p["input_ids"] == p["attention_mask"] == p["position_ids"] == ((1, 1), (2, 16), (4, 64))
    # decode: one token, past 1..max_context-1, mask = past + 1
    assert d["input_ids"] == d["position_ids"] == ((1, 1), (2, 1), (4, 1))
    assert d["attention_mask"] == ((1, 2), (2, 100), (4, 256))
    assert d[key] == ((1, H, 1, D), (2, H, 99, D), (4, H, 255, D))


@pytest.mark.parametrize("kw, match", [
    (dict(max_batch=0), "max_batch"), (dict(max_seq=-3), "max_seq"), (dict(max_context=1), "max_context"),
    (dict(max_seq=600, max_context=512), "must not exceed max_context"), (dict(opt_batch=2), "opt_batch"),
    (dict(opt_seq=1000), "opt_seq"), (dict(opt_context=1), "opt_context"), (dict(max_batch=1.5), "max_batch"),
])
def test_engine_shapes_reject_bad_sizes(kw, match):
    with pytest.raises(trt.TrtError, match=match):
        trt.EngineShapes(**kw)


def test_target_defaults_and_overrides():
    orin = trt.EngineShapes.for_target("jetson-orin")
    dc = trt.EngineShapes.for_target("datacenter")
    assert orin.max_batch <= dc.max_batch and orin.max_context <= dc.max_context
    small = trt.EngineShapes.for_target("datacenter", max_seq=64, max_context=128)
    assert small.seq_opt <= 64 and 2 <= small.context_opt <= 128       # opt values follow the maxima
    assert trt.EngineShapes.for_target("jetson-thor", max_batch=None).max_batch == 4
    with pytest.raises(trt.TrtError, match="unknown target"):
        trt.EngineShapes.for_target("xavier")


# --- export info --------------------------------------------------------------------------------


def test_layout_and_dtype(tiny_info, tmp_path):
    lay = trt.layout(tiny_info)
    assert (lay.num_layers, lay.kv_heads, lay.head_dim, lay.dtype) == (2, 2, 16, "float32")
    assert trt.graph_dtype({}) == "float32"                             # exports before --dtype
    assert trt.graph_dtype({"dtype": "float16"}) == "float16"
    assert trt.graph_dtype({"dtype": "torch.bfloat16"}) == "bfloat16"
    with pytest.raises(trt.TrtError, match="int8"):
        trt.graph_dtype({"dtype": "int8"})
    with pytest.raises(trt.TrtError, match="not a vq2trt ONNX export"):
        trt.layout(dict(tiny_info, format="something"))
    with pytest.raises(trt.TrtError, match="head_dim"):
        trt.layout({k: v for k, v in tiny_info.items() if k != "head_dim"})
    with pytest.raises(trt.TrtError, match="graph inputs"):
        trt.layout(dict(tiny_info, inputs=tiny_info["inputs"][:-1]))
    with pytest.raises(trt.TrtError, match="no such folder"):
        trt.load_layout(tmp_path / "absent")
    with pytest.raises(RunError, match="model.onnx"):
        trt.load_layout(tmp_path)


# --- command lines -------------------------------------------------------------------------------


def _profile_groups(cmd: list[str]) -> list[dict[str, str]]:
    """[{"min": spec, "opt": spec, "max": spec}] per --profile, asserting the three follow it directly."""
    out = []
    for i, word in enumerate(cmd):
        if word.startswith("--profile="):
            assert int(word.split("=")[1]) == len(out)
            three = cmd[i + 1:i + 4]
            assert sorted(w.split("=")[0] for w in three) == ["--maxShapes", "--minShapes", "--optShapes"]
            out.append({w.split("=")[0][2:5]: w.split("=", 1)[1] for w in three})
    return out


def _spec(spec: str) -> dict[str, tuple[int, ...]]:
    return {n: tuple(int(x) for x in dims.split("x")) for n, dims in (kv.rsplit(":", 1) for kv in spec.split(","))}


@pytest.mark.parametrize("target", trt.TARGETS)
@pytest.mark.parametrize("precision", trt.PRECISIONS)
def test_trtexec_command(tiny_export, tiny_info, target, precision):
    engine = tiny_export / "e.engine"
    cmd = trt.trtexec_command(tiny_export, engine, plugin_library=LIB, target=target, precision=precision)
    assert shlex.split(shlex.join(cmd)) == cmd                           # quote-safe
    assert cmd[0] == "trtexec" and f"--onnx={tiny_export / 'model.onnx'}" in cmd and f"--saveEngine={engine}" in cmd
    assert f"--staticPlugins={LIB}" in cmd and not any(w.startswith("--dynamicPlugins") for w in cmd)
    assert "--skipInference" in cmd
    mib = trt.TARGET_DEFAULTS[target].workspace_mib
    assert f"--memPoolSize=workspace:{mib}M" in cmd
    if precision == "fp32":        # the float32 graph in its own type: strongly typed, exact float32
        assert "--stronglyTyped" in cmd and "--noTF32" in cmd and "--fp16" not in cmd
    else:                          # lower precision from a float32 graph: weakly typed (TensorRT 10)
        assert f"--{precision}" in cmd and "--stronglyTyped" not in cmd and "--noTF32" not in cmd
    groups = _profile_groups(cmd)
    assert len(groups) == 2
    want = trt.profiles(tiny_info, trt.EngineShapes.for_target(target))
    for g, prof in zip(groups, want.values()):
        for which, key in enumerate(("min", "opt", "max")):
            spec = _spec(g[key])
            assert set(spec) == {"input_ids", "attention_mask", "position_ids", trt.PAST_WILDCARD}
            for name, shape in prof.items():
                pattern = name if name in spec else trt.PAST_WILDCARD
                assert fnmatch.fnmatchcase(name, pattern) and spec[pattern] == shape[which]


def test_wildcard_matches_exactly_the_cache_inputs(tiny_info):
    hits = [n for n in tiny_info["inputs"] if fnmatch.fnmatchcase(n, trt.PAST_WILDCARD)]
    assert hits == [n for n in tiny_info["inputs"] if n.startswith("past_key_values.")]
    assert trt.PAST_WILDCARD.count("*") == 1                  # trtexec allows one wildcard per name


def test_strong_typing_follows_the_graph_dtype(tiny_info, tmp_path):
    fp16 = dict(tiny_info, dtype="float16")
    cmd = trt.trtexec_command(tmp_path, "e", plugin_library=LIB, precision="fp16", info=fp16)
    assert "--stronglyTyped" in cmd and "--fp16" not in cmd and "--noTF32" not in cmd
    assert trt.default_precision(fp16) == "fp16" and trt.default_precision(dict(tiny_info, dtype="bfloat16")) == "bf16"
    with pytest.raises(trt.TrtError, match="--dtype float16"):     # fp32 graph, strongly typed, fp16 asked
        trt.trtexec_command(tmp_path, "e", plugin_library=LIB, precision="fp16", strongly_typed=True, info=tiny_info)
    with pytest.raises(trt.TrtError, match="float16"):             # an fp16 graph cannot give fp32 or bf16
        trt.trtexec_command(tmp_path, "e", plugin_library=LIB, precision="bf16", info=fp16)
    weak = trt.trtexec_command(tmp_path, "e", plugin_library=LIB, precision="fp16", strongly_typed=False, info=fp16)
    assert "--fp16" in weak and "--stronglyTyped" not in weak


def test_dynamic_plugins_and_builder_options(tiny_info, tmp_path):
    cmd = trt.trtexec_command(tmp_path, "e", plugin_library=LIB, dynamic_plugins=True, builder_optimization_level=5,
                              workspace_mib=512, info=tiny_info)
    assert f"--dynamicPlugins={LIB}" in cmd and f"--setPluginsToSerialize={LIB}" in cmd
    assert not any(w.startswith("--staticPlugins") for w in cmd)
    assert "--builderOptimizationLevel=5" in cmd and "--memPoolSize=workspace:512M" in cmd
    for bad in (dict(builder_optimization_level=6), dict(workspace_mib=0)):
        with pytest.raises(trt.TrtError):
            trt.trtexec_command(tmp_path, "e", plugin_library=LIB, info=tiny_info, **bad)


def test_run_command_picks_the_profile(tiny_info):
    pre = trt.trtexec_run_command("e.engine", tiny_info, plugin_library=LIB, seq=7)
    dec = trt.trtexec_run_command("e.engine", tiny_info, plugin_library=LIB, past=9)
    assert "--useProfile=0" in pre and "--useProfile=1" in dec and f"--staticPlugins={LIB}" in dec
    spec = _spec(next(w for w in dec if w.startswith("--shapes=")).split("=", 1)[1])
    assert spec["attention_mask"] == (1, 10) and spec[trt.PAST_WILDCARD] == (1, 2, 9, 16)
    with pytest.raises(trt.TrtError, match="decode"):
        trt.trtexec_run_command("e.engine", tiny_info, plugin_library=LIB, seq=3, past=9)


def _polygraphy_profiles(cmd: list[str]) -> tuple[list[dict], dict]:
    """([{min, opt, max}] per profile, --input-shapes) from a polygraphy argv."""
    lists: dict[str, list[dict]] = {"min": [], "opt": [], "max": []}
    inputs, i = {}, 0
    while i < len(cmd):
        flag = cmd[i]
        j = i + 1
        while j < len(cmd) and not cmd[j].startswith("--"):
            j += 1
        vals = {w.rsplit(":", 1)[0]: tuple(int(x) for x in w.rsplit(":", 1)[1].strip("[]").split(","))
                for w in cmd[i + 1:j] if w.endswith("]") and ":[" in w}
        if flag.startswith("--trt-") and flag.endswith("-shapes"):
            lists[flag[6:9]].append(vals)
        elif flag == "--input-shapes":
            inputs = vals
        i = j
    assert len(lists["min"]) == len(lists["opt"]) == len(lists["max"])
    return [dict(min=a, opt=b, max=c) for a, b, c in zip(lists["min"], lists["opt"], lists["max"])], inputs


def test_polygraphy_command(tiny_export, tiny_info):
    cmd = trt.polygraphy_command(tiny_export, plugin_library=LIB, shapes=SHAPES, engine="e.engine")
    assert cmd[:4] == ["polygraphy", "run", str(tiny_export / "model.onnx"), "--trt"]
    assert cmd[cmd.index("--plugins") + 1] == LIB and "--onnxrt" not in cmd
    assert shlex.split(shlex.join(cmd)) == cmd
    profs, inputs = _polygraphy_profiles(cmd)
    want = trt.profiles(tiny_info, SHAPES)
    assert len(profs) == 2
    for got, prof in zip(profs, want.values()):
        for which, key in enumerate(("min", "opt", "max")):
            assert got[key] == {n: s[which] for n, s in prof.items()}
    assert set(inputs) == set(tiny_info["inputs"])
    for n, s in inputs.items():                                    # the run's shapes lie in profile 0
        lo, hi = want["prefill"][n][0], want["prefill"][n][2]
        assert all(a <= b <= c for a, b, c in zip(lo, s, hi))


# --- plugin library lookup ----------------------------------------------------------------------


def test_trt_library_lookup(monkeypatch, tmp_path):
    from vq2trt.runtime import library as lib

    so = tmp_path / "libvq2trt_trt.so"
    so.write_bytes(b"")
    monkeypatch.setenv(lib.TRT_ENV_VAR, str(so))
    assert lib.get_trt_library_path() == so
    monkeypatch.setenv(lib.TRT_ENV_VAR, str(tmp_path / "nope.so"))
    with pytest.raises(lib.LibraryNotFound, match=lib.TRT_ENV_VAR):
        lib.get_trt_library_path()
    monkeypatch.delenv(lib.TRT_ENV_VAR)
    monkeypatch.setattr(lib, "_trt_candidates", lambda: [tmp_path / "absent.so"])
    with pytest.raises(lib.LibraryNotFound, match=r"libvq2trt_trt\.so not found.*absent\.so.*make plugins"):
        lib.get_trt_library_path()
    assert lib._default_places("tensorrt", lib.TRT_LIBRARY_NAME)[0].parts[-4:] == \
        ("build", "plugins", "tensorrt", "libvq2trt_trt.so")
    monkeypatch.setattr(lib, "_trt_candidates", lambda: [tmp_path / "absent.so", so])
    assert lib.get_trt_library_path() == so                             # first existing candidate


def test_build_engine_without_tensorrt_raises_with_the_command(tiny_export, monkeypatch, tmp_path):
    from vq2trt.runtime import library as lib

    so = tmp_path / "libvq2trt_trt.so"
    so.write_bytes(b"")
    monkeypatch.setenv(lib.TRT_ENV_VAR, str(so))
    monkeypatch.setitem(sys.modules, "tensorrt", None)                  # `import tensorrt` fails, always
    engine = tmp_path / "out.engine"
    with pytest.raises(trt.TensorRTNotFound, match="vq2trt\\[tensorrt\\]") as e:
        trt.build_engine(tiny_export, engine, target="jetson-orin", precision="fp16", log=lambda *_: None)
    assert e.value.command == trt.trtexec_command(tiny_export, engine, plugin_library=so, target="jetson-orin",
                                                  precision="fp16")
    assert not engine.exists()
    monkeypatch.delenv(lib.TRT_ENV_VAR)
    monkeypatch.setattr(lib, "_trt_candidates", lambda: [tmp_path / "absent.so"])
    with pytest.raises(lib.LibraryNotFound, match="make plugins"):       # checked before anything else
        trt.build_engine(tiny_export, engine)
    with pytest.raises(lib.LibraryNotFound, match="nope.so"):
        trt.build_engine(tiny_export, engine, plugin_library=tmp_path / "nope.so")


# --- export/TENSORRT.md -------------------------------------------------------------------------

ONNX = "out/smollm2-v4-k256-onnx"          # the Makefile's demo export
ONNX16 = "out/smollm2-v4-k256-onnx-fp16"


def smollm2_info(tiny_info: dict, dtype: str = "float32") -> dict:
    """SmolLM2-135M's vq2trt_onnx.json: the tiny export's keys with SmolLM2's sizes (30 layers,
    3 KV heads, head_dim 64, vocabulary 49152)."""
    L = 30
    kv = [f"past_key_values.{i}.{t}" for i in range(L) for t in ("key", "value")]
    assert [n for n in tiny_info["inputs"] if not n.startswith("past_key_values.")] == \
        ["input_ids", "attention_mask", "position_ids"]
    return dict(tiny_info, num_layers=L, num_key_value_heads=3, head_dim=64, vocab_size=49152, dtype=dtype,
                inputs=["input_ids", "attention_mask", "position_ids", *kv], quantized=True)


def doc_commands(tiny_info: dict) -> dict[str, list[str]]:
    """Every command export/TENSORRT.md shows, by recipe."""
    i32, i16 = smollm2_info(tiny_info), smollm2_info(tiny_info, "float16")
    dc = "out/smollm2.datacenter.fp16.engine"
    return {
        "datacenter-fp16-weak": trt.trtexec_command(ONNX, dc, plugin_library=LIB, target="datacenter",
                                                    precision="fp16", info=i32),
        "datacenter-fp16-strong": trt.trtexec_command(ONNX16, "out/smollm2.datacenter.fp16-strong.engine",
                                                      plugin_library=LIB, target="datacenter", precision="fp16",
                                                      info=i16),
        "datacenter-fp32": trt.trtexec_command(ONNX, "out/smollm2.datacenter.fp32.engine", plugin_library=LIB,
                                               target="datacenter", precision="fp32", info=i32),
        "jetson-orin": trt.trtexec_command(ONNX, "out/smollm2.jetson-orin.fp16.engine", plugin_library=LIB,
                                           target="jetson-orin", precision="fp16", info=i32),
        "jetson-thor": trt.trtexec_command(ONNX16, "out/smollm2.jetson-thor.fp16.engine", plugin_library=LIB,
                                           target="jetson-thor", precision="fp16", info=i16),
        "run-prefill": trt.trtexec_run_command(dc, i32, plugin_library=LIB, seq=128),
        "run-decode": trt.trtexec_run_command(dc, i32, plugin_library=LIB, past=511),
        "polygraphy": trt.polygraphy_command(ONNX, plugin_library=LIB, target="datacenter", precision="fp16",
                                             info=i32),
    }


def _doc_command_lines(text: str) -> list[list[str]]:
    """argv of every trtexec / polygraphy command in the doc's code blocks."""
    out = []
    for block in re.findall(r"```(?:sh|bash|shell)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.split()[:1] in (["trtexec"], ["polygraphy"]):
                out.append(shlex.split(line, comments=True))
    return out


def test_doc_shows_the_generated_commands(tiny_info):
    text = DOC.read_text()
    for name, cmd in doc_commands(tiny_info).items():
        assert trt.format_command(cmd) in text, f"export/TENSORRT.md lacks the current {name} command"


def test_doc_commands_are_consistent(tiny_info):
    """Every trtexec / polygraphy line in the doc, hand-written or not: the plugin library, the
    plugin flag, input names of a SmolLM2 export, min <= opt <= max, run shapes inside the built
    engine's profile."""
    info = smollm2_info(tiny_info)
    names = set(info["inputs"])
    cmds = _doc_command_lines(DOC.read_text())
    assert len(cmds) >= 8
    built: dict[str, list[dict]] = {}
    for cmd in (c for c in cmds if c[0] == "trtexec" and any(w.startswith("--saveEngine=") for w in c)):
        assert any(w.endswith("libvq2trt_trt.so") and w.startswith(("--staticPlugins=", "--dynamicPlugins="))
                   for w in cmd), cmd
        profs = [{k: _spec(v) for k, v in g.items()} for g in _profile_groups(cmd)]
        assert len(profs) == 2
        for p in profs:
            for n in p["min"]:
                assert any(fnmatch.fnmatchcase(x, n) for x in names), n
            assert set(p["min"]) == set(p["opt"]) == set(p["max"])
            for n in p["min"]:
                assert all(a <= b <= c for a, b, c in zip(p["min"][n], p["opt"][n], p["max"][n])), (cmd, n)
        assert not ("--stronglyTyped" in cmd and ("--fp16" in cmd or "--bf16" in cmd))   # trtexec drops them
        built[next(w for w in cmd if w.startswith("--saveEngine=")).split("=", 1)[1]] = profs
    runs = [c for c in cmds if c[0] == "trtexec" and any(w.startswith("--loadEngine=") for w in c)]
    assert runs and built
    for cmd in runs:
        opts = dict(w[2:].split("=", 1) for w in cmd[1:])
        assert opts["staticPlugins"].endswith("libvq2trt_trt.so")
        prof = built[opts["loadEngine"]][int(opts["useProfile"])]
        for n, s in _spec(opts["shapes"]).items():
            assert any(fnmatch.fnmatchcase(x, n) for x in names), n
            assert all(a <= b <= c for a, b, c in zip(prof["min"][n], s, prof["max"][n])), (n, s)
    polys = [c for c in cmds if c[0] == "polygraphy"]
    assert polys
    for cmd in polys:
        assert cmd[1] == "run" and "--trt" in cmd and cmd[cmd.index("--plugins") + 1].endswith("libvq2trt_trt.so")
        assert "--onnxrt" not in cmd                 # polygraphy's ORT backend cannot load libvq2trt_ort.so
        profs, inputs = _polygraphy_profiles(cmd)
        assert len(profs) == 2
        for p in profs:
            assert set(p["min"]) == set(p["opt"]) == set(p["max"]) == names
            for n in names:
                assert all(a <= b <= c for a, b, c in zip(p["min"][n], p["opt"][n], p["max"][n]))
        assert set(inputs) == names
