import torch
import torch.nn as nn


def rms_norm(x, weight, eps):
    """``x / sqrt(mean(x^2, -1) + eps) * weight`` in float32 (float64 for
    float64 x), returned in x's dtype; plain ATen operations."""
    acc = torch.promote_types(x.dtype, torch.float32)
    x_acc = x.to(acc)
    rstd = torch.rsqrt(x_acc.square().mean(-1, keepdim=True) + eps)
    return (x_acc * rstd * weight.to(acc)).to(x.dtype)


class RMSNormFn(torch.autograd.Function):
    """``x / sqrt(mean(x^2, -1) + eps) * weight`` in float32 (float64 for
    float64 x), returned in x's dtype, saving only x and the (..., 1) rstd
    for backward (the composition of ATen ops would keep three tensors of
    x's size)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        acc = torch.promote_types(x.dtype, torch.float32)
        x_acc = x.to(acc)
        rstd = torch.rsqrt(x_acc.square().mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        out = x_acc * rstd * weight.to(acc)
        # no .to() that returns its input: torch.compile (2.11) then loses
        # the gradient of an autograd.Function's output (all zeros)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        acc = rstd.dtype
        x_hat = x.to(acc) * rstd
        g = grad.to(acc)
        gw = g * weight.to(acc)
        # d/dx of x * rstd: rstd * (gw - x_hat * mean(gw * x_hat))
        dx = rstd * (gw - x_hat * (gw * x_hat).mean(-1, keepdim=True))
        dweight = (g * x_hat).reshape(-1, x.shape[-1]).sum(0)
        return dx.to(x.dtype), dweight.to(weight.dtype), None


class RMSNorm(nn.Module):
    """Root-mean-square norm with a weight and no bias (Mamba / Vim).

    ``y = x / sqrt(mean(x^2, -1) + eps) * weight``, computed in float32 (or
    float64) and returned in x's dtype. x: (..., dim). Where a gradient is
    recorded it runs as :class:`RMSNormFn` (less memory for backward), else
    as the same plain operations (:func:`rms_norm`): inference, and what an
    ONNX export traces, has no autograd.Function in its way.
    """

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if torch.is_grad_enabled() and (x.requires_grad
                                        or self.weight.requires_grad):
            return RMSNormFn.apply(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f'{self.weight.shape[0]}, eps={self.eps}'
