"""Conversions between vq2trt checkpoints and other projects' quantized layouts (docs/vptq.md)."""
