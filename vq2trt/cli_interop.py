"""`vq2trt import` and `vq2trt export-vptq`: microsoft/VPTQ checkpoints in and out (docs/vptq.md)."""

from __future__ import annotations

import argparse
import sys


def cmd_import(a: argparse.Namespace) -> int:
    from vq2trt.interop.vptq_folder import import_vptq

    out, layers = import_vptq(a.src, a.out, overwrite=a.overwrite, allow_rounding=a.allow_rounding)
    bits = sum(w.stored_bits() for n, w in layers.items() if n != "lm_head")
    n = sum(w.out_features * w.in_features for name, w in layers.items() if name != "lm_head")
    print(f"imported {len(layers)} VPTQ Linear layers, {bits / max(n, 1):.3f} bits per weight all-in")
    print(f"wrote {out}")
    return 0


def cmd_export_vptq(a: argparse.Namespace) -> int:
    from vq2trt.interop.vptq_folder import export_vptq

    out, notes = export_vptq(a.checkpoint, a.out, overwrite=a.overwrite)
    for note in notes:
        print(f"vq2trt: note: {note}", file=sys.stderr)
    print(f"wrote {out} (quant_method 'vptq'; loads with transformers + the vptq package)")
    return 0


def add_parsers(sub) -> None:
    i = sub.add_parser("import", help="convert a microsoft/VPTQ checkpoint folder into a vq2trt checkpoint")
    i.add_argument("src", help="folder with config.json (quant_method 'vptq') and *.safetensors")
    i.add_argument("--out", required=True, help="vq2trt checkpoint folder to write")
    i.add_argument("--allow-rounding", action="store_true",
                   help="round float32/bfloat16 codebooks and scales that float16 cannot hold exactly "
                        "(default: refuse, naming the tensor)")
    i.add_argument("--overwrite", action="store_true")
    i.set_defaults(func=cmd_import)

    e = sub.add_parser("export-vptq", help="write a vq2trt checkpoint in microsoft/VPTQ's layout (transformers' "
                                           "VptqConfig)")
    e.add_argument("checkpoint", help="vq2trt checkpoint folder")
    e.add_argument("--out", required=True, help="folder to write")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_export_vptq)
