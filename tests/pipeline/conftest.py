"""Fixtures the CLI tests share: a tiny HF model folder and a calibration text file."""

import pytest

from .tiny import TEXT, save_tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def calib(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text(TEXT)
    return p
