"""Depthwise causal / anti-causal 1-D convolution of the Mamba mixer."""
import torch.nn.functional as F


def causal_conv1d(x, weight, bias=None, activation=None, reverse=False):
    """Depthwise conv over tokens that only looks back (or only ahead).

    ``reverse=False``: ``out[t] = bias + sum_k w[k] * x[t - (K-1) + k]``
    (causal, zero padding on the left).
    ``reverse=True``: the anti-causal twin, ``out[t] = bias + sum_k w[k] *
    x[t + (K-1) - k]``; equal to flip -> causal conv -> flip, computed
    without flipping the sequence.

    Args:
        x: (b, E, L).
        weight: (E, 1, K) or (E, K).
        bias: (E,) or None.
        activation: None or 'silu'.

    Returns:
        (b, E, L) in x's dtype.
    """
    if weight.dim() == 2:
        weight = weight.unsqueeze(1)
    channels, _, width = weight.shape
    length = x.shape[-1]
    if reverse:
        # Taps mirrored so the window x[t .. t+K-1] sees w[K-1] .. w[0].
        out = F.conv1d(x, weight.flip(-1), bias, padding=width - 1,
                       groups=channels)[..., width - 1:]
    else:
        out = F.conv1d(x, weight, bias, padding=width - 1,
                       groups=channels)[..., :length]
    if activation == 'silu':
        out = F.silu(out)
    elif activation is not None:
        raise ValueError(f"unknown activation '{activation}', "
                         "choose None or 'silu'")
    return out
