from .bimamba_inner import bimamba_inner
from .causal_conv1d import causal_conv1d, causal_conv1d_tokens
from .selective_scan import (available_scan_impls, bi_selective_scan,
                             select_scan_impl, selective_scan)
from .selective_scan_onnx import bi_selective_scan_onnx, selective_scan_onnx
from .selective_scan_ref import bi_selective_scan_ref, selective_scan_ref

__all__ = [
    'bimamba_inner', 'causal_conv1d', 'causal_conv1d_tokens',
    'selective_scan', 'bi_selective_scan', 'selective_scan_ref',
    'bi_selective_scan_ref', 'available_scan_impls', 'select_scan_impl',
    'selective_scan_onnx', 'bi_selective_scan_onnx'
]
