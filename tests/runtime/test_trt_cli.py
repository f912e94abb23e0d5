"""`vq2trt build-engine` and `vq2trt compare --trt` where TensorRT is not installed: the trtexec
command instead of an engine, exit 2 with a message on bad input, a clear message for --trt."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from vq2trt.cli import main
from vq2trt.cli_deploy import EXIT_NO_TENSORRT
from vq2trt.runtime import trt


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A float export of the tiny LLaMA (build-engine reads its vq2trt_onnx.json, never runs it)."""
    pytest.importorskip("onnxscript")
    from tests.conftest import make_tiny_llama
    from vq2trt.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("trtcli") / "onnx"
    export_onnx(make_tiny_llama(), out, ops="basic")
    return out


@pytest.fixture
def no_tensorrt(monkeypatch, tmp_path):
    """TensorRT not importable, and a (dummy) plugin library where $VQ2TRT_TRT_LIBRARY says."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    so = tmp_path / "libvq2trt_trt.so"
    so.write_bytes(b"")
    monkeypatch.setenv("VQ2TRT_TRT_LIBRARY", str(so))
    return so


def test_build_engine_prints_the_trtexec_command_without_tensorrt(export_dir, no_tensorrt, tmp_path, capsys):
    engine = tmp_path / "tiny.engine"
    rc = main(["build-engine", str(export_dir), "--out", str(engine), "--target", "jetson-orin", "--max-seq", "32",
               "--max-context", "64"])
    out, err = capsys.readouterr()
    assert rc == EXIT_NO_TENSORRT == 3
    assert "TensorRT's Python package was not found" in err and not engine.exists()
    cmd = shlex.split(out.strip())
    want = trt.trtexec_command(export_dir, engine, plugin_library=no_tensorrt, target="jetson-orin", precision="fp16",
                               shapes=trt.EngineShapes.for_target("jetson-orin", max_seq=32, max_context=64))
    assert cmd == want
    assert "--maxShapes=input_ids:1x32,attention_mask:1x32,position_ids:1x32,past_key_values.*:1x2x0x16" in cmd


def test_print_command_exits_0_and_names_the_defaults(export_dir, no_tensorrt, capsys):
    assert main(["build-engine", str(export_dir), "--print-command", "--precision", "fp32"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    assert cmd[0] == "trtexec" and f"--staticPlugins={no_tensorrt}" in cmd
    assert f"--saveEngine={export_dir / 'model.datacenter.fp32.engine'}" in cmd
    assert "--stronglyTyped" in cmd and "--noTF32" in cmd
    assert main(["build-engine", str(export_dir), "--print-command", "--dynamic-plugins"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    assert f"--dynamicPlugins={no_tensorrt}" in cmd and f"--setPluginsToSerialize={no_tensorrt}" in cmd
    assert main(["build-engine", str(export_dir), "--print-command", "--polygraphy"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    assert cmd[:2] == ["polygraphy", "run"] and cmd[cmd.index("--plugins") + 1] == str(no_tensorrt)


def test_print_command_before_make_plugins(export_dir, monkeypatch, capsys):
    """Without the library the command still prints, naming where `make plugins` puts it."""
    from vq2trt.runtime import library

    monkeypatch.delenv("VQ2TRT_TRT_LIBRARY", raising=False)
    monkeypatch.setattr(library, "_trt_candidates", lambda: [library._default_places("tensorrt", "x.so")[0]])
    assert main(["build-engine", str(export_dir), "--print-command"]) == 0
    out, err = capsys.readouterr()
    assert "make plugins" in err and "--staticPlugins=" in out


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "-1"], "max_batch must be a positive integer"),
    (["--max-seq", "0"], "max_seq must be a positive integer"),
    (["--max-seq", "512", "--max-context", "256"], "must not exceed max_context"),
    (["--opt-seq", "5000"], "opt_seq"),
    (["--workspace-mib", "-5"], "workspace"),
    (["--precision", "fp16", "--strongly-typed"], "--dtype float16"),
])
def test_bad_sizes_exit_2_with_a_message(export_dir, no_tensorrt, args, message, capsys):
    assert main(["build-engine", str(export_dir), "--print-command", *args]) == 2
    assert message in capsys.readouterr().err


def test_not_an_export_exits_2(tmp_path, no_tensorrt, capsys):
    assert main(["build-engine", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["build-engine", str(tmp_path)]) == 2
    assert "model.onnx" in capsys.readouterr().err
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "vq2trt_onnx.json").write_text(json.dumps({"format": "other"}))
    assert main(["build-engine", str(tmp_path)]) == 2
    assert "not a vq2trt ONNX export" in capsys.readouterr().err


def test_missing_plugin_library_exits_2(export_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VQ2TRT_TRT_LIBRARY", str(tmp_path / "absent.so"))
    assert main(["build-engine", str(export_dir)]) == 2
    assert "VQ2TRT_TRT_LIBRARY" in capsys.readouterr().err
    monkeypatch.delenv("VQ2TRT_TRT_LIBRARY")
    assert main(["build-engine", str(export_dir), "--plugin-library", str(tmp_path / "nope.so")]) == 2
    assert "make plugins" in capsys.readouterr().err


def test_compare_trt_without_tensorrt_says_what_to_install(export_dir, no_tensorrt, capsys):
    assert main(["compare", str(export_dir), "--trt"]) == 2
    err = capsys.readouterr().err
    assert "compare --trt" in err and "pip install 'vq2trt[tensorrt]'" in err
    assert main(["compare", str(export_dir), "--trt", "some.engine"]) == 2
    assert "pip install 'vq2trt[tensorrt]'" in capsys.readouterr().err
