"""Fixtures the CLI tests share: a tiny HF model folder, a calibration text file, and both with a
coarsely quantized checkpoint of the model (the distillation CLI tests)."""

import pytest

from .tiny import COARSE, TEXT, calib_ids, save_tiny, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def calib(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text(TEXT)
    return p


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from vq2trt.config import QuantConfig
    from vq2trt.io import save_quantized
    from vq2trt.quantize import quantize

    root = tmp_path_factory.mktemp("distill")
    model_dir = save_tiny(root / "model")
    model, tok = tiny_model(), tiny_tokenizer()
    quantize(model, QuantConfig(**COARSE), calib_ids(8, 32), device="cpu", progress=False)
    save_quantized(model, QuantConfig(**COARSE), root / "q", tokenizer=tok)
    calib = root / "calib.txt"
    calib.write_text(TEXT)
    return model_dir, root / "q", calib
