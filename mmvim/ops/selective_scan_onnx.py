"""The selective scan as one ONNX ``Scan`` over the tokens, for ONNX export.

The reference (:mod:`mmvim.ops.selective_scan_ref`) loops over the L tokens
in Python: traced, that loop is unrolled for one L and bakes the sequence
length into the graph; the compiled kernels are no ONNX operators at all.
Here the recurrence ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t *
B_t``, ``y_t = <h_t, C_t>`` goes through torch's ``scan`` higher-order
operator (``torch._higher_order_ops.scan``, a prototype in torch 2.11),
which ``torch.export`` keeps as one node and the dynamo-based
``torch.onnx.export`` writes as the standard ONNX ``Scan`` operator: a loop
whose trip count is the sequence length at run time, so one graph serves
every input size, and stock ONNX Runtime runs it. In eager mode the
operator runs a Python loop over the tokens (as slow as the reference).

What runs per token is small: the decay and input terms of all tokens are
computed before the scan, in the token-major (L, ..., E, N) layout that the
``Scan`` slices without a transpose, and the two directions of the Vim mixer
share one scan (the backward branch's tokens flipped and stacked with the
forward ones), so a layer runs L steps, not 2L. Measured in ONNX Runtime
on the 2-core CPU (one thread, Vim-Ti at 224: b 1, E 384, N 16, L 197): both
directions of a layer take 7 ms; one direction took 8.8 ms as a ``Scan`` of
its own and 30.6 ms in a loop-free alternative (chunks of T = 16 tokens, T
unrolled steps, a masked exp of segment sums over the chunks), which also
traced a Vim layer to about 600 instead of 200 ATen operations (export
time).

Shapes: batch b, channels E, state size N, tokens L, groups G.
"""
import torch
import torch.nn.functional as F


def softplus(x):
    """``log(1 + exp(x))`` as ``relu(x) + log1p(exp(-|x|))``: no overflow
    for any x, equal to ``F.softplus`` within float32 rounding, and what
    ONNX Runtime computes 4x faster on the CPU than its ``Softplus``
    (0.17 against 0.73 ms for Vim-Ti's (1, 384, 197) delta, one thread)."""
    return F.relu(x) + torch.log1p(torch.exp(-x.abs()))


def _token_major(BC, dim, length):
    """B or C, (b, N, L), grouped (b, G, N, L) or constant (E, N), as a
    (L, b, 1, N), (L, b, E, N) or (L, 1, E, N) tensor that broadcasts
    against the token-major (L, b, E, N) terms, E = dim, L = length."""
    if BC.dim() == 2:
        return BC[None, None].expand(length, -1, -1, -1)
    if BC.dim() == 3:
        return BC.permute(2, 0, 1).unsqueeze(2)
    groups = BC.shape[1]
    if dim % groups != 0:
        raise ValueError(f'B/C have {groups} groups, which does not divide '
                         f'the {dim} channels of u')
    # group g serves channels g * E/G .. (g + 1) * E/G - 1, as the reference
    per_channel = BC[:, :, None].expand(-1, -1, dim // groups, -1, -1)
    return per_channel.flatten(1, 2).permute(3, 0, 1, 2)


def _token_inputs(u, delta, B, C, delta_bias, delta_softplus, reverse,
                  acc):
    """One direction's inputs in the scan's token-major layout: delta, u
    (L, b, E, 1) (delta with its bias and softplus), B, C (L, b, E or 1, N)
    or (L, 1, E, N); the tokens flipped for ``reverse`` (the reverse scan is
    the forward scan of the flipped sequence)."""
    dim, length = u.shape[1:]
    delta = delta.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = softplus(delta)
    u, delta = (t.to(acc).permute(2, 0, 1).unsqueeze(-1) for t in (u, delta))
    B = _token_major(B.to(acc), dim, length)
    C = _token_major(C.to(acc), dim, length)
    if reverse:
        return delta.flip(0), u.flip(0), B.flip(0), C.flip(0)
    return delta, u, B, C


def _step(state, token):
    """One token: state (..., E, N) -> the next state and y_t (..., E)."""
    decay, inputs, C = token
    state = decay * state + inputs
    return state, (state * C).sum(-1)


def _scan_tokens(delta, u, A, B, C):
    """The recurrence over the leading (token) dim of token-major inputs
    (any batch dims between it and E): y (L, ..., E) and the last state
    (..., E, N). The decay and input terms of all tokens are computed
    before the scan, which then runs a multiply-add and a dot product per
    token."""
    # imported here: a prototype that only the export uses, so that
    # ``import mmvim`` works with a torch that lacks it (e.g. gpu_check)
    from torch._higher_order_ops.scan import scan
    decay = torch.exp(delta * A)  # (L, ..., E, N)
    inputs = delta * u * B
    C = C.expand(decay.shape[:-2] + C.shape[-2:])
    state = decay.new_zeros(decay.shape[1:])
    state, y = scan(_step, state, (decay, inputs, C), dim=0)
    return y, state


def selective_scan_onnx(u,
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
    """Selective scan, Mamba semantics, as one ``scan`` over the tokens.

    The same arguments and result as :func:`selective_scan_ref`: u, delta,
    z: (b, E, L); A: (E, N); B, C: (b, N, L), (b, G, N, L) or (E, N); D,
    delta_bias: (E,); ``reverse`` scans from the last token to the first.
    Returns y (b, E, L) in u's dtype, and with ``return_last_state`` the
    final state (b, E, N) in float32 (float64 for float64 inputs).
    """
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    delta_t, u_t, B_t, C_t = _token_inputs(u, delta, B, C, delta_bias,
                                           delta_softplus, reverse, acc)
    y, state = _scan_tokens(delta_t, u_t, A.to(acc), B_t, C_t)
    if reverse:
        y = y.flip(0)
    y = y.permute(1, 2, 0)  # (L, b, E) -> (b, E, L)
    if D is not None:
        y = y + u.to(acc) * D.to(acc)[:, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(u.dtype)
    return (y, state) if return_last_state else y


def bi_selective_scan_onnx(u,
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
    """Both directions of the Vim mixer in one ``scan``, as
    :func:`bi_selective_scan_ref`: the ``*_b`` branch, given in original
    token order, is scanned right to left; ``(y_fwd + y_bwd) * silu(z)``,
    halved when ``divide_out``. Returns (b, E, L) in u's dtype."""
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    forward = _token_inputs(u, delta, B, C, delta_bias, delta_softplus,
                            False, acc)
    backward = _token_inputs(u_b, delta_b, B_b, C_b, delta_bias_b,
                             delta_softplus, True, acc)
    # the directions side by side, (L, 2, b, ...): one step per token
    delta_t, u_t, B_t, C_t = (
        torch.stack(torch.broadcast_tensors(f, b), dim=1)
        for f, b in zip(forward, backward))
    A_2 = torch.stack([A.to(acc), A_b.to(acc)])[:, None]  # (2, 1, E, N)
    y, _ = _scan_tokens(delta_t, u_t, A_2, B_t, C_t)
    y_f, y_b = y[:, 0], y[:, 1].flip(0)  # (L, b, E) each
    y = (y_f + y_b).permute(1, 2, 0)
    if D is not None:
        y = y + u.to(acc) * D.to(acc)[:, None]
    if D_b is not None:
        y = y + u_b.to(acc) * D_b.to(acc)[:, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    if divide_out:
        y = y / 2
    return y.to(u.dtype)
