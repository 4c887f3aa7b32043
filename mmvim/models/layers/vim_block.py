import torch.nn as nn

from .bimamba_mixer import BiMambaMixer
from .drop_path import DropPath
from .rms_norm import RMSNorm


class VimBlock(nn.Module):
    """One Vim layer: ``stream = stream + drop_path(mixer(norm(stream)))``.

    The released code writes it as "add -> norm -> mixer" with the add of
    layer i done at the start of layer i + 1; this is the same computation
    with each layer owning its own add (so its drop-path rate belongs to its
    own output). The residual stream is kept in float32.

    Args:
        embed_dims (int): token width D.
        drop_path (float): stochastic-depth rate of this layer's output.
        norm_eps (float): RMSNorm epsilon.
        mixer_cfg (dict): keyword arguments of :class:`BiMambaMixer`.
    """

    def __init__(self, embed_dims, drop_path=0., norm_eps=1e-5,
                 mixer_cfg=None):
        super().__init__()
        self.norm = RMSNorm(embed_dims, eps=norm_eps)
        self.mixer = BiMambaMixer(embed_dims, **(mixer_cfg or {}))
        self.drop_path = DropPath(drop_path)

    def residual_branch(self, stream):
        """What the layer adds to the stream: drop_path(mixer(norm(stream)))
        in float32."""
        hidden = self.mixer(self.norm(stream.to(self.norm.weight.dtype)))
        return self.drop_path(hidden).float()

    def forward(self, stream):
        """stream: (b, L, D) float32 -> (b, L, D) float32."""
        return stream + self.residual_branch(stream)
