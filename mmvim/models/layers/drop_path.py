import torch.nn as nn


class DropPath(nn.Module):
    """Stochastic depth: drop whole samples of a residual branch in training.

    x: (B, ...). Kept samples are scaled by ``1 / (1 - drop_prob)``.
    """

    def __init__(self, drop_prob=0.):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1. - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1))
        return x * mask.bernoulli_(keep).div_(keep)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob:.3f}'
