"""Fixtures of the runtime tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def library() -> str:
    """libvq2trt_ort.so's path; a failure, not a skip, when it is missing (make test builds it)."""
    from vq2trt.runtime.library import LibraryNotFound, get_library_path
    try:
        return str(get_library_path())
    except LibraryNotFound as e:
        pytest.fail(f"{e}. Run `make plugins` (make test does it first).")
