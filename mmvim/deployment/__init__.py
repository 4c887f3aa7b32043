"""Deployment of mmvim models: export to ONNX with standard operators only
(:mod:`.onnx_export`) and running the exported file in ONNX Runtime
(:mod:`.onnx_runner`). ``import mmvim`` does not import it; it needs the
onnx, onnxscript and onnxruntime packages (pinned by tools/setup_env.sh).
"""
from .adaptive_avg_pool import AdaptiveAvgPool2dMatMul, adaptive_pool_matrix
from .load_model import build_model, load_model
from .onnx_export import (INPUT_NAME, MIN_DYNAMIC_SIZE, OPSET, SIZE_DIVISOR,
                          OnnxExportWrapper, check_export_shape, export_onnx,
                          export_task, input_normalisation, non_standard_ops,
                          prepare_for_onnx_export)
from .onnx_runner import OnnxRunner

__all__ = [
    'AdaptiveAvgPool2dMatMul', 'adaptive_pool_matrix', 'OnnxExportWrapper',
    'OnnxRunner', 'build_model', 'check_export_shape', 'export_onnx',
    'export_task', 'input_normalisation', 'load_model', 'non_standard_ops',
    'prepare_for_onnx_export', 'INPUT_NAME', 'MIN_DYNAMIC_SIZE', 'OPSET',
    'SIZE_DIVISOR'
]
