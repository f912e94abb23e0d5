"""torch -> ONNX export of quantized models; VQGemm nodes follow export/vqgemm_op.json."""
