"""The compiled scan kernels as PyTorch operators.

The C++ / CUDA sources (``ops/selective_scan/csrc``) register their kernels
with PyTorch's dispatcher (``TORCH_LIBRARY_IMPL``): the CPU kernel and the
CUDA kernel under the ``mmvim`` namespace, for CPU and CUDA tensors, and the
CUDA kernel built for the CPU under the SIMT emulation under
``mmvim_simt`` (CPU tensors). This module defines what the dispatcher needs
besides the kernels, following PyTorch's custom-operator guidance
(https://pytorch.org/tutorials/advanced/cpp_custom_ops.html):

- the schemas (:data:`SCHEMAS`): the ops allocate their outputs and mutate
  no input;
- a fake (meta) implementation of each, giving the output shapes and dtypes
  without running a kernel, for ``torch.compile`` and ``torch.export``;
- autograd formulas (``torch.library.register_autograd``): ``scan_fwd`` is
  differentiated by the ``scan_bwd`` kernel, ``conv_silu`` by its PyTorch
  formulation;
- ``mmvim::bimamba_inner`` (for every kind, which it takes as an
  argument), Vim's mixer between in_proj and out_proj as one
  operator whose backward recomputes its input side (see
  :mod:`mmvim.ops.bimamba_inner`).

Nothing is registered on import: :func:`define_ops` runs when a kernel is
first built (``selective_scan_kernel.build_kernel``), once per namespace.
"""
import torch

from .causal_conv1d import conv_silu_backward

# the namespace each kernel kind registers under
NAMESPACES = {'cpu': 'mmvim', 'cuda': 'mmvim', 'simt': 'mmvim_simt'}

# one direction's tensors, each its own argument so that autograd reaches
# every one (see selective_scan_interface.h for the shapes)
DIRECTION = ('x', 'conv_weight', 'conv_bias', 'delta', 'A', 'B', 'C', 'D',
             'delta_bias')
TENSORS_PER_DIRECTION = len(DIRECTION)
_REQUIRED = ('x', 'delta', 'A', 'B', 'C')
_DIRS = ', '.join(
    [('Tensor ' if n in _REQUIRED else 'Tensor? ') + n for n in DIRECTION] +
    ['Tensor? ' + n + '_b' for n in DIRECTION])
SCHEMAS = {
    # one direction (x_b None), or two: left to right, then right to left
    'scan_fwd': (f'({_DIRS}, Tensor? z, bool reverse, bool softplus, '
                 'float scale, bool return_last_state) '
                 '-> (Tensor, Tensor, Tensor)'),
    # -> per direction [du, ddelta, dA, dB, dC, dD, dbias], then dz
    'scan_bwd': (f'({_DIRS}, Tensor? z, Tensor dout, Tensor states, '
                 'bool reverse, bool softplus, float scale) -> Tensor[]'),
    'conv_silu': '(Tensor x, Tensor weight, Tensor? bias, bool reverse) '
                 '-> Tensor',
}

# the CUDA kernel's tiling (selective_scan_cuda.h), which sizes the states
# it saves for backward: tiles of token_threads * ITEMS tokens
CUDA_ITEMS = 8
CUDA_ROW_THREADS = 4
CUDA_MAX_TOKEN_THREADS = 32

_libraries = {}  # namespace -> torch.library.Library (kept alive)


def ops_namespace(kind):
    """``torch.ops.mmvim`` or ``torch.ops.mmvim_simt`` for a kernel kind."""
    return getattr(torch.ops, NAMESPACES[kind])


def _cuda_layout(namespace, x):
    """Whether the op runs the CUDA kernel (on a GPU or emulated)."""
    return namespace == 'mmvim_simt' or x.device.type == 'cuda'


def cuda_tiles(length):
    """Tiles the CUDA kernel splits ``length`` tokens into
    (selective_scan_cuda.cpp, base_params)."""
    needed = max((length + CUDA_ITEMS - 1) // CUDA_ITEMS, 1)
    threads = min(CUDA_MAX_TOKEN_THREADS, needed)
    threads = -(-threads // CUDA_ROW_THREADS) * CUDA_ROW_THREADS
    tile = threads * CUDA_ITEMS
    return max(1, (length + tile - 1) // tile)


def scan_arguments(directions):
    """The 18 direction arguments of scan_fwd / scan_bwd from the tensors
    of one or two directions (9 each)."""
    directions = list(directions)
    return directions + [None] * (2 * TENSORS_PER_DIRECTION - len(directions))


def _directions(dirs):
    """The given directions of the 18 direction arguments."""
    per = TENSORS_PER_DIRECTION
    return [dirs[:per]] + ([dirs[per:]] if dirs[per] is not None else [])


def _bc_grad_shape(t):
    """dB / dC keep the dimensions B / C are shared over (size 1 or stride
    0) at size 1."""
    return (1 if t.shape[0] == 1 or t.stride(0) == 0 else t.shape[0],
            1 if t.shape[1] == 1 or t.stride(1) == 0 else t.shape[1],
            t.shape[2], t.shape[3])


def _bc_input_grad(grad, t):
    """The kernel's dB for the input B: the same shape, unless B was
    expanded with stride 0 to full size, whose gradient then holds the sum
    in one slot (what autograd adds up into the expanded tensor's base)."""
    grad = grad.to(t.dtype)
    if grad.shape == t.shape:
        return grad
    full = grad.new_zeros(t.shape)
    full[:grad.shape[0], :grad.shape[1]] = grad
    return full


def _fake_scan_fwd(namespace):

    def fake(*args):
        dirs, (z, reverse, softplus, scale, return_last_state) = \
            args[:18], args[18:]
        x, A = dirs[0], dirs[4]
        batch, length, dim = x.shape
        state = A.shape[1]
        out = x.new_empty((batch, length, dim))
        last_rows = batch if return_last_state else 0
        if _cuda_layout(namespace, x):
            ndirs = len(_directions(dirs))
            states = x.new_empty(
                (ndirs * batch * dim * cuda_tiles(length) * state, ),
                dtype=torch.float32)
            last = x.new_empty((last_rows, dim, state), dtype=torch.float32)
        else:  # the CPU kernel recomputes everything in the backward
            states = x.new_empty((0, ))
            last = x.new_empty((last_rows, dim, state))
        return out, states, last

    return fake


def _fake_scan_bwd(namespace):

    def fake(*args):
        dirs, z = args[:18], args[18]
        x = dirs[0]
        cuda = _cuda_layout(namespace, x)
        weights = torch.float32 if cuda else x.dtype
        grads = []
        for d in _directions(dirs):
            A, B, C = d[4], d[5], d[6]
            dim = A.shape[0]
            grads += [
                x.new_empty(x.shape), x.new_empty(x.shape),
                A.new_empty(A.shape, dtype=weights),
                x.new_empty(_bc_grad_shape(B), dtype=weights),
                x.new_empty(_bc_grad_shape(C), dtype=weights),
                x.new_empty((dim, ), dtype=weights),
                x.new_empty((dim, ), dtype=weights)
            ]
        grads.append(x.new_empty(x.shape if z is not None else (0, )))
        return grads

    return fake


def _fake_conv_silu(x, weight, bias, reverse):
    return x.new_empty(x.shape)


def _setup_scan(ctx, inputs, output):
    dirs, (z, reverse, softplus, scale, _) = inputs[:18], inputs[18:]
    _, states, last = output
    ctx.mark_non_differentiable(states, last)
    ctx.save_for_backward(z, states, *dirs)
    ctx.options = (reverse, softplus, scale)


def _scan_backward(namespace):

    def backward(ctx, dout, dstates, dlast):
        z, states, *dirs = ctx.saved_tensors
        reverse, softplus, scale = ctx.options
        x = dirs[0]
        *grads, dz = getattr(torch.ops, namespace).scan_bwd(
            *dirs, z, dout.to(x.dtype).contiguous(), states, reverse,
            softplus, scale)
        given = _directions(dirs)
        dirs_grads = []
        for k, d in enumerate(given):
            du, ddelta, dA, dB, dC, dD, dbias = grads[7 * k:7 * k + 7]
            x_k, conv_w, conv_b, delta, A, B, C, D, bias = d
            dx, dconv_w, dconv_b = du, None, None
            if conv_w is not None:  # du is the gradient of the conv's output
                rev = k == 1 or (reverse and len(given) == 1)
                dx, dconv_w, dconv_b = conv_silu_backward(
                    x_k, conv_w, conv_b, rev, du)
            dirs_grads += [
                dx.to(x_k.dtype), dconv_w, dconv_b, ddelta.to(delta.dtype),
                dA.to(A.dtype),
                _bc_input_grad(dB, B),
                _bc_input_grad(dC, C),
                None if D is None else dD.to(D.dtype),
                None if bias is None else dbias.to(bias.dtype)
            ]
        dirs_grads = scan_arguments(dirs_grads)
        return (*dirs_grads, None if z is None else dz.to(z.dtype), None,
                None, None, None)

    return backward


def _setup_conv(ctx, inputs, output):
    x, weight, bias, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.reverse = reverse


def _conv_backward(ctx, du):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = conv_silu_backward(x, weight, bias, ctx.reverse, du)
    return dx, dweight, dbias, None


def define_ops(namespace):
    """Defines the ops of ``namespace`` ('mmvim' or 'mmvim_simt') with
    their fake implementations and autograd formulas; idempotent. The
    kernels register themselves when their extension is loaded."""
    if namespace in _libraries:
        return
    library = torch.library.Library(namespace, 'FRAGMENT')
    for name, schema in SCHEMAS.items():
        library.define(name + schema)
    qualified = {name: f'{namespace}::{name}' for name in SCHEMAS}
    torch.library.register_fake(
        qualified['scan_fwd'], _fake_scan_fwd(namespace), lib=library)
    torch.library.register_fake(
        qualified['scan_bwd'], _fake_scan_bwd(namespace), lib=library)
    torch.library.register_fake(
        qualified['conv_silu'], _fake_conv_silu, lib=library)
    torch.library.register_autograd(
        qualified['scan_fwd'], _scan_backward(namespace),
        setup_context=_setup_scan, lib=library)
    torch.library.register_autograd(
        qualified['conv_silu'], _conv_backward, setup_context=_setup_conv,
        lib=library)
    _libraries[namespace] = library
    from .bimamba_inner import define_bimamba_inner
    define_bimamba_inner()  # mmvim::bimamba_inner, for every kind
