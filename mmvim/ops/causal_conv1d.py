"""Depthwise causal / anti-causal 1-D convolution of the Mamba mixer."""
import torch
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


def causal_conv1d_tokens(x, weight, bias=None, reverse=False):
    """:func:`causal_conv1d` on token-major input, without a transpose.

    ``out[:, t] = bias + sum_k w[:, k] * x[:, t - (K-1) + k]`` (causal), or
    ``x[:, t + (K-1) - k]`` for ``reverse`` (anti-causal), as a sum of K
    shifted slices: element-wise work on the (b, L, E) layout the linear
    layers produce.

    Args:
        x: (b, L, E), any strides.
        weight: (E, 1, K) or (E, K).
        bias: (E,) or None.

    Returns:
        (b, L, E) in the promoted dtype of x and weight.
    """
    weight = weight.reshape(weight.shape[0], -1)
    out = None
    for k, window in enumerate(_tap_windows(x, weight.shape[1], reverse)):
        term = window * weight[:, k]
        out = term if out is None else out + term
    return out if bias is None else out + bias


def _tap_windows(x, width, reverse):
    """The (b, L, E) slices of zero-padded x that tap k multiplies:
    ``x[:, t - (K-1) + k]`` (causal) or ``x[:, t + (K-1) - k]`` (reverse),
    for k = 0 .. width - 1."""
    length = x.shape[1]
    pad = (0, 0, width - 1, 0) if not reverse else (0, 0, 0, width - 1)
    xp = F.pad(x, pad)
    for k in range(width):
        start = k if not reverse else width - 1 - k
        yield xp[:, start:start + length]


def conv_silu_backward(x, weight, bias, reverse, du):
    """Gradients (dx, dweight, dbias) of ``silu(causal_conv1d_tokens(x,
    weight, bias, reverse))`` for the output gradient ``du``, written out
    (no autograd inside, so compilers can trace it): with v the conv's
    output, g = du * silu'(v); dx is g convolved with the same taps in the
    opposite direction; dweight[:, k] sums g against the k-th shifted x.

    Args:
        x: (b, L, E); weight: (E, 1, K) or (E, K); bias: (E,) or None;
        du: (b, L, E).

    Returns:
        dx, dweight, dbias (None without bias), each in its input's dtype
        and shape, computed in float32 (float64 for float64 inputs).
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    taps = weight.reshape(weight.shape[0], -1).to(compute)
    xc = x.to(compute)
    v = causal_conv1d_tokens(xc, taps,
                             None if bias is None else bias.to(compute),
                             reverse)
    sig = torch.sigmoid(v)
    g = du.to(compute) * sig * (1 + v * (1 - sig))
    dx = causal_conv1d_tokens(g, taps, None, not reverse)
    columns = [(g * window).sum((0, 1))
               for window in _tap_windows(xc, taps.shape[1], reverse)]
    dweight = torch.stack(columns, dim=1).reshape(weight.shape)
    dbias = None if bias is None else g.sum((0, 1)).to(bias.dtype)
    return dx.to(x.dtype), dweight.to(weight.dtype), dbias


def causal_conv1d_silu_tokens(x, weight, bias=None, reverse=False,
                              kind=None):
    """``silu(causal_conv1d_tokens(x, weight, bias, reverse))``: on the
    compiled kernel ``kind`` ('cpu', 'cuda', 'simt') in one pass (the
    ``conv_silu`` operator, differentiable), or in PyTorch when ``kind`` is
    None. x: (b, L, E) -> (b, L, E) in x's dtype."""
    if kind is None:
        return F.silu(causal_conv1d_tokens(x, weight, bias, reverse))
    from .selective_scan_kernel import compute_dtypes, kernel_ops
    data, weight_dtype = compute_dtypes(kind, x)
    taps = weight.reshape(weight.shape[0], -1).to(weight_dtype)
    u = kernel_ops(kind).conv_silu(
        x.to(data), taps.contiguous(),
        None if bias is None else bias.to(weight_dtype).contiguous(),
        bool(reverse))
    return u.to(x.dtype)
