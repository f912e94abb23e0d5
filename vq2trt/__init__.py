"""vq2trt: ~2-bit vector-quantized (VPTQ) LLMs for ONNX Runtime and TensorRT.

Importing the package loads nothing heavy: torch and transformers are needed
only by the quantizer (``pip install vq2trt[quant]``).
"""

__version__ = "0.1.0"
