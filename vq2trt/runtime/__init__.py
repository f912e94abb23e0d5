"""Inference side of vq2trt: ONNX Runtime sessions with the VQGemm custom-op library, generation
and comparison. Importing this package imports neither torch nor onnxruntime; each module
imports its optional dependency when used and says what to install when it is missing."""
