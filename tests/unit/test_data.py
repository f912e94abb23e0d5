"""Text reading, WikiText-2 lookup (fetch monkeypatched, never real network) and calibration windows."""

import pytest
import torch

from vq2trt import data
from vq2trt.data import DataError, calibration_batch, read_text, tokenize_for_eval, wikitext_file

TEXT = "the quick brown fox jumps over the lazy dog . " * 20


# ---- read_text ----------------------------------------------------------------------------------

def test_read_text_normalises_newlines(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b" = Title = \r\n body\r\n")
    assert read_text(p) == " = Title = \n body\n"


@pytest.mark.parametrize("content, message", [
    (None, "is missing"), (b"", "empty or whitespace"), (b" \n\t\r\n", "empty or whitespace"),
    (b"\xff\xfe\xfa", "as UTF-8"),
])
def test_read_text_errors_name_the_file(tmp_path, content, message):
    p = tmp_path / "t.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=f"{p}.*{message}|{message}.*{p}"):
        read_text(p)


def test_read_text_on_folder(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_text(tmp_path)


# ---- calibration_batch / tokenize_for_eval --------------------------------------------------------

def _word_level():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", *sorted(set(TEXT.split()))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


class _EncodeOnly:
    """A non-callable tokenizer with encode() -> list[int]."""

    def encode(self, text):
        return [ord(c) % 97 for c in text]


@pytest.mark.parametrize("make_tok", ["bytes", "word_level", "encode_only"])
def test_calibration_batch_deterministic_windows(byte_tokenizer, make_tok):
    tok = {"bytes": byte_tokenizer, "word_level": _word_level(), "encode_only": _EncodeOnly()}[make_tok]
    a = calibration_batch(tok, TEXT, num_samples=6, seqlen=16, seed=3)
    assert a.shape == (6, 16) and a.dtype == torch.long
    assert torch.equal(a, calibration_batch(tok, TEXT, num_samples=6, seqlen=16, seed=3))
    assert not torch.equal(a, calibration_batch(tok, TEXT, num_samples=6, seqlen=16, seed=4))
    ids = tokenize_for_eval(tok, TEXT)[0].tolist()
    for row in a.tolist():  # every row is a contiguous window of the tokenized text
        assert any(ids[s:s + 16] == row for s in range(len(ids) - 15))


def test_calibration_batch_too_short(byte_tokenizer):
    with pytest.raises(DataError, match="has 5 tokens; windows of 8 need at least 9"):
        calibration_batch(byte_tokenizer, "hello", num_samples=2, seqlen=8, seed=0)
    assert calibration_batch(byte_tokenizer, "123456789", num_samples=4, seqlen=8, seed=0).shape == (4, 8)


def test_calibration_batch_bad_sizes(byte_tokenizer):
    with pytest.raises(DataError, match="num_samples >= 1"):
        calibration_batch(byte_tokenizer, TEXT, num_samples=0, seqlen=8, seed=0)


def test_tokenize_for_eval(byte_tokenizer):
    ids = tokenize_for_eval(byte_tokenizer, "abc")
    assert ids.shape == (1, 3) and ids.tolist() == [[97, 98, 99]]
    with pytest.raises(DataError, match="no tokenizer"):
        tokenize_for_eval(None, "abc")


# ---- wikitext_file --------------------------------------------------------------------------------

@pytest.fixture
def no_fetch(tmp_path, monkeypatch):
    """Empty cache, no $VQ2TRT_WIKITEXT, and a fetch that always fails."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(data.WIKITEXT_ENV, raising=False)

    def fail(dest):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "_fetch_wikitext", fail)


def test_default_root_is_beside_the_repo():
    assert data.DEFAULT_WIKITEXT.parts[-3:] == ("shared", "data", "wikitext-2")
    assert ".." not in data.DEFAULT_WIKITEXT.parts


def test_missing_root_explains_how_to_provide(tmp_path, no_fetch):
    root = tmp_path / "absent"
    with pytest.raises(DataError) as e:
        wikitext_file("test", root=root)
    msg = str(e.value)
    for part in (str(root), "wiki.test.raw", "network unreachable", "--text", data.WIKITEXT_ENV):
        assert part in msg


def test_found_in_root_and_env(tmp_path, no_fetch, monkeypatch):
    (tmp_path / "wiki.test.raw").write_text("x")
    (tmp_path / "wiki.valid.tokens").write_text("x")
    assert wikitext_file("test", root=tmp_path) == tmp_path / "wiki.test.raw"
    assert wikitext_file("valid", root=tmp_path) == tmp_path / "wiki.valid.tokens"
    (tmp_path / "wiki.valid.raw").write_text("x")
    assert wikitext_file("valid", root=tmp_path) == tmp_path / "wiki.valid.raw"
    monkeypatch.setenv(data.WIKITEXT_ENV, str(tmp_path))
    assert wikitext_file("test") == tmp_path / "wiki.test.raw"
    with pytest.raises(DataError, match="unknown WikiText-2 split 'train'"):
        wikitext_file("train")


def test_fetch_fills_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calls = []

    def fetch(dest):
        calls.append(dest)
        dest.mkdir(parents=True)
        (dest / "wiki.test.raw").write_text("fetched")

    monkeypatch.setattr(data, "_fetch_wikitext", fetch)
    p = wikitext_file("test", root=tmp_path / "absent")
    assert p.read_text() == "fetched" and p.parent == tmp_path / "xdg" / "vq2trt" / "wikitext-2"
    assert wikitext_file("test", root=tmp_path / "absent") == p and len(calls) == 1
