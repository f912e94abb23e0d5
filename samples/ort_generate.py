"""A minimal app: greedy generation from a `vq2trt export` folder with onnxruntime, numpy and
tokenizers only (no torch, no vq2trt code besides the library's path).

    python samples/ort_generate.py out/smollm2-v4-k256-onnx "The capital of France is"
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from vq2trt.runtime.library import get_library_path  # or the path to libvq2trt_ort.so itself


def main(folder: str, prompt: str, new_tokens: int = 24) -> None:
    d = Path(folder)
    info = json.loads((d / "vq2trt_onnx.json").read_text())
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(get_library_path()))
    sess = ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))

    ids = tok.encode(prompt).ids
    kv_shape = (1, info["num_key_value_heads"], 0, info["head_dim"])
    past = {n: np.zeros(kv_shape, np.float32) for n in info["inputs"][3:]}
    feed_ids, out = ids, []
    for _ in range(new_tokens):
        total = len(ids) + len(out)
        feeds = {"input_ids": np.array([feed_ids], np.int64),
                 "attention_mask": np.ones((1, total), np.int64),
                 "position_ids": np.arange(total - len(feed_ids), total, dtype=np.int64)[None], **past}
        logits, *present = sess.run(None, feeds)
        past = dict(zip(info["inputs"][3:], present))    # present.i.* becomes past_key_values.i.*
        nxt = int(logits[0, -1].argmax())
        if nxt == info.get("eos_token_id"):
            break
        out.append(nxt)
        feed_ids = [nxt]
    print(prompt + tok.decode(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
