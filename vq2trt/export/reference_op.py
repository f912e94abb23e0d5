"""VQGemm for `onnx.reference.ReferenceEvaluator`: runs an exported model in numpy with no
compiled code, through the same reference.vq_gemm every kernel is tested against.

    from onnx.reference import ReferenceEvaluator
    from vq2trt.export.reference_op import VQGemm
    sess = ReferenceEvaluator("model.onnx", new_ops=[VQGemm])
"""

from __future__ import annotations

from onnx.reference.op_run import OpRun

from vq2trt.export import op
from vq2trt.reference import vq_gemm


class VQGemm(OpRun):
    op_domain = op.DOMAIN

    def _run(self, x, *weights, **attrs):
        a = {name: getattr(self, name) for name in self.attributes_names_}
        if isinstance(a.get("plugin_version"), bytes):
            a["plugin_version"] = a["plugin_version"].decode()
        w = op.weight_from_node_inputs(a, list(weights))
        return (vq_gemm(x, w).astype(x.dtype),)
