"""Readable pure-PyTorch reference of the selective scan (the executable spec).

Every kernel of mmvim is tested against these functions, and they are the
fallback when no compiled kernel is available. They favour clarity over speed:
one Python loop over the tokens, state and accumulation in float32 (or float64
when the inputs are float64).

Shapes: batch b, channels E, state size N, tokens L, groups G.
"""
import torch
import torch.nn.functional as F


def _expand_groups(BC, dim, batch, length):
    """(b, N, L), (b, G, N, L) or constant (E, N) -> (b, E, N, L), E = dim."""
    if BC.dim() == 2:
        return BC[None, :, :, None].expand(batch, -1, -1, length)
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, dim, -1, -1)
    groups = BC.shape[1]
    if dim % groups != 0:
        raise ValueError(f'B/C have {groups} groups, which does not divide '
                         f'the {dim} channels of u')
    return BC.repeat_interleave(dim // groups, dim=1)


def selective_scan_ref(u,
                       delta,
                       A,
                       B,
                       C,
                       D=None,
                       z=None,
                       delta_bias=None,
                       delta_softplus=False,
                       return_last_state=False,
                       reverse=False):
    """Selective scan, Mamba semantics.

    ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t``,
    ``y_t = <h_t, C_t> + D * u_t``, then ``y *= silu(z)`` if z is given.

    Args:
        u, delta, z: (b, E, L).
        A: (E, N), real.
        B, C: (b, N, L), grouped (b, G, N, L), or constant (E, N) (the
            same for every batch element and token).
        D, delta_bias: (E,).
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state h (b, E, N).
        reverse: scan from the last token to the first (t = L-1 .. 0),
            without flipping any tensor.

    Returns:
        y: (b, E, L) in u's dtype (and the last state in float32/64).
    """
    dtype_in = u.dtype
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    u = u.to(acc)
    delta = delta.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    A = A.to(acc)
    B = _expand_groups(B.to(acc), dim, batch, length)
    C = _expand_groups(C.to(acc), dim, batch, length)

    # (b, E, L, N) decay and input terms, then a sequential recurrence.
    # unbind: per-token views whose backward stacks the L gradients once
    # (indexing [:, :, t] would scatter each into a zero (b, E, L, N) tensor)
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :]).unbind(2)
    inputs = ((delta * u).unsqueeze(-1) * B.transpose(2, 3)).unbind(2)
    C = C.transpose(2, 3).unbind(2)

    h = u.new_zeros(batch, dim, A.shape[1])
    ys = [None] * length
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for t in steps:
        h = decay[t] * h + inputs[t]
        ys[t] = (h * C[t]).sum(-1)
    y = torch.stack(ys, dim=-1) if length > 0 else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D.to(acc)[:, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def bi_selective_scan_ref(u,
                          delta,
                          A,
                          B,
                          C,
                          D,
                          u_b,
                          delta_b,
                          A_b,
                          B_b,
                          C_b,
                          D_b,
                          z=None,
                          delta_bias=None,
                          delta_bias_b=None,
                          delta_softplus=False,
                          divide_out=True):
    """Both directions of the Vim mixer.

    The forward branch (u, delta, A, B, C, D, delta_bias) is scanned left to
    right; the backward branch (``*_b``), given in ORIGINAL token order, is
    scanned right to left. Result ``(y_fwd + y_bwd) * silu(z)``, halved when
    ``divide_out``. Equal to the reference code's flip -> scan -> flip.
    Shapes as in :func:`selective_scan_ref`; returns (b, E, L) in u's dtype.
    """
    y_f = selective_scan_ref(u, delta, A, B, C, D, None, delta_bias,
                             delta_softplus)
    y_b = selective_scan_ref(u_b, delta_b, A_b, B_b, C_b, D_b, None,
                             delta_bias_b, delta_softplus, reverse=True)
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    y = y_f.to(acc) + y_b.to(acc)
    if z is not None:
        y = y * F.silu(z.to(acc))
    if divide_out:
        y = y / 2
    return y.to(u.dtype)
