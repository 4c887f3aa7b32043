"""Adaptive average pooling as two matrix products, for ONNX export."""
import torch
import torch.nn as nn


def adaptive_pool_matrix(size, out_size, device=None):
    """(out_size, size) averaging matrix of 1-D adaptive average pooling:
    row i averages the inputs ``floor(i * size / out_size)`` ..
    ``ceil((i + 1) * size / out_size) - 1``, PyTorch's windows."""
    index = torch.arange(size, device=device)
    rows = torch.arange(out_size, device=device)
    start = torch.div(rows * size, out_size, rounding_mode='floor')
    end = torch.div((rows + 1) * size + out_size - 1, out_size,
                    rounding_mode='floor')
    window = (index >= start[:, None]) & (index < end[:, None])
    return window.float() / (end - start)[:, None].float()


class AdaptiveAvgPool2dMatMul(nn.Module):
    """:class:`torch.nn.AdaptiveAvgPool2d` as ``P_h @ x @ P_w^T``.

    The same windows and result (within float32 rounding) for any input
    size, in operations whose shapes follow a symbolic input size (ONNX
    ``Range``, comparisons, ``MatMul``). torch 2.11 exports
    ``AdaptiveAvgPool2d`` with window indices fixed for the traced size,
    so an exported UPerHead (pyramid pooling to 1, 2, 3 and 6 cells) fails
    or pools the wrong cells at another input size;
    :func:`mmvim.deployment.prepare_for_onnx_export` puts this layer in its
    place.

    Args:
        output_size (int | tuple): (out_h, out_w), or one int for both.
    """

    def __init__(self, output_size):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if None in tuple(output_size):
            raise ValueError('output_size None (keep the input size) is not '
                             'supported; give both sizes')
        self.output_size = tuple(output_size)

    def forward(self, x):
        """x: (..., H, W) -> (..., out_h, out_w)."""
        rows = adaptive_pool_matrix(x.shape[-2], self.output_size[0],
                                    x.device).to(x.dtype)
        cols = adaptive_pool_matrix(x.shape[-1], self.output_size[1],
                                    x.device).to(x.dtype)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))

    def extra_repr(self):
        return f'output_size={self.output_size}'
