import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a weight and no bias (Mamba / Vim).

    ``y = x / sqrt(mean(x^2, -1) + eps) * weight``, computed in float32 and
    returned in x's dtype. x: (..., dim).
    """

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        rstd = torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
        return (x32 * rstd * self.weight.float()).to(x.dtype)

    def extra_repr(self):
        return f'{self.weight.shape[0]}, eps={self.eps}'
