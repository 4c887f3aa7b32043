"""Speed and memory of Vim against DeiT over resolution (the paper's Fig. 1, 3, 4).

    python tools/analysis_tools/benchmark_efficiency.py [--device cuda|cpu]
        [--models vim-ti deit-ti-eager deit-ti-sdpa vim-s deit-s-eager deit-s-sdpa]
        [--resolutions 512 640 738 1024 1248] [--train-resolutions ...]
        [--grow-step 256] [--max-resolution 4096] [--necks none fpn]
        [--dtypes float32 bfloat16] [--modes inference train] [--batch 32]
        [--warmup 3] [--repeats 10] [--scan-impl auto|ref|cpu|cuda|simt]
        [--deit-impl auto|mmpretrain|timm] [--time-budget SECONDS]
        [--sdpa-backend auto|flash|efficient|math] [--threads N] [--depth N]
        [--compile] [--out results.json] [--plot results.png]
    python tools/analysis_tools/benchmark_efficiency.py --replot results.json

Models: Vim-Ti / Vim-S (``mmvim.models.Vim``), Hier-Vim-T
(``mmvim.models.HierVim``) against mmpretrain's Swin-T (``SwinTransformer``,
windows of 7, small maps padded as in dense tasks; both backbone alone, neck ``none`` only,
the last stage's stride-32 map), and DeiT-Ti / DeiT-S
(mmpretrain's ``VisionTransformer``, or timm's with ``--deit-impl timm``:
the same network, for machines without OpenMMLab's model zoos; ``auto``
takes mmpretrain where it imports), DeiT with two attention paths:
``eager`` materialises the (B, heads, M, M) attention matrix as the DeiT /
timm code of the paper's time did; ``sdpa`` is PyTorch's
``scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU),
the stronger baseline one would pick today. Each model is built for the
resolution it runs at (no position-embedding resize inside the timed call),
both families on the same patch grid ((H - 16) // 16 + 1 per side); neck
``none`` is the backbone alone (last layer's stride-16 map), ``fpn`` adds
mmvim's ``SimpleFPN`` (ViTDet pyramid, 256 channels, 5 levels).

Per (neck, dtype, mode) the resolutions run in ascending order, the models
taking turns at each; on CUDA they keep growing by ``--grow-step`` after
the listed ones until a model runs out of memory, passes
``--max-resolution`` or one call takes longer than ``--max-call-seconds``.
An out-of-memory ends that model's series only. ``--time-budget`` stops
the run before a row that would not finish in time (estimated from the
series' previous row); what was not run is listed as ``skipped`` rows with
the reason. ``--out`` is rewritten after every row, so a run stopped from
outside keeps what it measured.

Measurement: ``--warmup`` untimed calls, then ``--repeats`` calls each timed
on its own (``torch.cuda.synchronize`` before reading the clock on CUDA,
``time.perf_counter``); the median gives images / s = batch / median.
``inference`` is a forward under ``torch.no_grad``, ``train`` a forward +
backward of a scalar loss (gradients kept, so they count in the memory).
``bfloat16`` / ``float16`` run under ``torch.autocast`` with float32 weights
(Vim keeps its residual stream and scan state in float32 by design).
Memory: what PyTorch's allocator held at the peak of a call, the parameters
and the input batch included (see ``MEMORY_DEFINITION``).

``--compile`` wraps every model in ``torch.compile`` (Inductor; Vim's
scan kernels are registered operators, so each model is one graph); the
first warm-up call compiles and is not timed.

A table goes to stdout, everything to JSON, and a PNG plots images / s (log
scale) and peak memory against resolution. Timings are for reading, never
asserted. Without a GPU it runs the same grid on the CPU (small by default).
"""
import argparse
import contextlib
import datetime
import functools
import gc
import json
import os
import platform
import statistics
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> what to build; DeiT's attention path is part of the name
MODEL_SPECS = {
    'vim-ti': dict(family='vim', arch='tiny', embed_dims=192),
    'vim-s': dict(family='vim', arch='small', embed_dims=384),
    'deit-ti-eager': dict(family='deit', arch='deit-tiny', embed_dims=192,
                          attention='eager'),
    'deit-ti-sdpa': dict(family='deit', arch='deit-tiny', embed_dims=192,
                         attention='sdpa'),
    'deit-s-eager': dict(family='deit', arch='deit-small', embed_dims=384,
                         attention='eager'),
    'deit-s-sdpa': dict(family='deit', arch='deit-small', embed_dims=384,
                        attention='sdpa'),
    # hierarchical: the stride-32 map of the last stage (no FPN rows)
    'hier-vim-t': dict(family='hier_vim', arch='tiny', embed_dims=768),
    'swin-t': dict(family='swin', arch='tiny', embed_dims=768),
}
HIERARCHICAL = ('hier_vim', 'swin')
# each model compared with: Vim with the DeiTs of its size (baselines_of),
# Hier-Vim-T with mmpretrain's Swin-T
BASELINES = {'hier-vim-t': ['swin-t']}
# DeiT shapes for the timm build (mmpretrain's arch_zoo holds the same):
# embed dims, layers, heads; patch 16, MLP ratio 4, qkv bias, class token
DEIT_ARCHS = {'deit-tiny': dict(embed_dims=192, num_layers=12, num_heads=3),
              'deit-small': dict(embed_dims=384, num_layers=12, num_heads=6)}
DEIT_IMPLS = ('auto', 'mmpretrain', 'timm')
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16,
          'float16': torch.float16}
PAPER_RESOLUTIONS = [512, 640, 738, 1024, 1248]
# the paper's claims at 1248x1248, Vim-Ti against (eager) DeiT-Ti
TARGET_RESOLUTION = 1248
TARGET_FPS_RATIO = 2.8
TARGET_MEMORY_FRACTION = 0.132

MEMORY_DEFINITION = {
    'cuda': 'torch.cuda.max_memory_allocated() over the timed calls, reset '
            'just before them with the model and the input batch on the GPU: '
            'parameters + input + activations (+ gradients in train mode); '
            "the caching allocator's reserved memory is higher",
    'cpu': 'bytes of the parameters, buffers and input batch + the peak of '
           "PyTorch's CPU allocations during one extra call, from the "
           'allocation trace of torch.profiler(profile_memory=True); not the '
           'process RSS',
}
TIME_DEFINITION = ('images / s = batch / median of the timed calls; each call '
                   'timed alone with time.perf_counter (after '
                   'torch.cuda.synchronize on CUDA), after the warm-up calls')


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if cuda else 'cpu',
                        choices=['cpu', 'cuda'])
    parser.add_argument('--models', nargs='+', choices=list(MODEL_SPECS),
                        help='default: all on CUDA; vim-ti, deit-ti-eager, '
                        'deit-ti-sdpa on the CPU')
    parser.add_argument('--resolutions', nargs='+', type=int,
                        help='image side in pixels; default: the paper\'s '
                        f'{PAPER_RESOLUTIONS} on CUDA, 224 512 on the CPU')
    parser.add_argument('--train-resolutions', nargs='+', type=int,
                        help='resolutions of --modes train (default: those '
                        'of inference)')
    parser.add_argument('--grow-step', type=int,
                        help='after the listed resolutions keep adding this '
                        'many pixels until out of memory (default 256 on '
                        'CUDA, 0 = off on the CPU)')
    parser.add_argument('--max-resolution', type=int, default=4096)
    parser.add_argument('--max-call-seconds', type=float, default=30.,
                        help='stop growing a series once one call is slower')
    parser.add_argument('--necks', nargs='+', default=['none', 'fpn'],
                        choices=['none', 'fpn'])
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES),
                        help='default: float32 bfloat16 on CUDA, float32 on '
                        'the CPU')
    parser.add_argument('--modes', nargs='+', default=['inference'],
                        choices=['inference', 'train'])
    parser.add_argument('--batch', type=int,
                        help='images per call (default 32 on CUDA, 1 on the '
                        'CPU)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--scan-impl', default='auto',
                        choices=['auto', 'ref', 'cpu', 'cuda', 'simt'],
                        help='selective scan of Vim (sets MMVIM_SCAN_IMPL, '
                        "as mmvim.ops.selective_scan takes it): 'auto' uses "
                        'the CPU kernel on the CPU and the CUDA kernel on a '
                        'GPU once it has passed a self-check there (else '
                        "the reference, with a warning); 'cuda' makes a "
                        "failed build or self-check an error; 'simt' runs "
                        'the CUDA sources on the CPU under emulation (slow)')
    parser.add_argument('--deit-impl', default='auto', choices=DEIT_IMPLS,
                        help="which code builds DeiT and Swin-T: "
                        "'mmpretrain' (VisionTransformer, SwinTransformer), "
                        "'timm' (the same shapes in timm's), 'auto': "
                        'mmpretrain when it imports, else timm')
    parser.add_argument('--time-budget', type=float,
                        help='seconds for the whole run: a row that would '
                        'not finish in time is not started (listed as '
                        'skipped)')
    parser.add_argument('--sdpa-backend', default='auto',
                        choices=['auto', 'flash', 'efficient', 'math'],
                        help='restrict the SDPA DeiT rows to one backend')
    parser.add_argument('--threads', type=int,
                        help='CPU threads of PyTorch (default: its own '
                        'choice); 1 is steadier on a machine shared with '
                        'other work')
    parser.add_argument('--depth', type=int,
                        help='override the number of layers of every model '
                        '(smoke tests); default: Vim 24, DeiT 12')
    parser.add_argument('--compile', action='store_true',
                        help='time torch.compile(model) (Inductor); the '
                        'first warm-up call compiles (needs --warmup >= 1)')
    parser.add_argument('--out', default='work_dirs/benchmark_efficiency.json')
    parser.add_argument('--plot', default=None,
                        help='PNG path (default: --out with .png)')
    parser.add_argument('--replot', metavar='JSON',
                        help='measure nothing: print the report and draw '
                        'the PNG of an earlier run')
    args = parser.parse_args(argv)

    on_cuda = args.device == 'cuda'
    if on_cuda and not torch.cuda.is_available():
        parser.error('--device cuda but no GPU is visible to PyTorch; use '
                     '--device cpu')
    if args.models is None:
        args.models = list(MODEL_SPECS) if on_cuda else [
            'vim-ti', 'deit-ti-eager', 'deit-ti-sdpa']
    if args.resolutions is None:
        args.resolutions = PAPER_RESOLUTIONS if on_cuda else [224, 512]
    args.resolutions = sorted(set(args.resolutions))
    args.train_resolutions = sorted(set(args.train_resolutions or
                                        args.resolutions))
    if min(args.resolutions + args.train_resolutions) < 16:
        parser.error('resolutions must be at least 16 pixels (one patch)')
    if args.grow_step is None:
        args.grow_step = 256 if on_cuda else 0
    if args.dtypes is None:
        args.dtypes = ['float32', 'bfloat16'] if on_cuda else ['float32']
    if args.batch is None:
        args.batch = 32 if on_cuda else 1
    if args.plot is None:
        args.plot = os.path.splitext(args.replot or args.out)[0] + '.png'
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        parser.error('--repeats and --batch must be >= 1, --warmup >= 0')
    if args.compile and args.warmup < 1:
        parser.error('--compile needs --warmup >= 1: the first call '
                     'compiles the model')
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error('--time-budget must be a positive number of seconds')
    return args


# --------------------------------------------------------------- attention
def eager_attention(query, key, value, attn_mask=None, dropout_p=0.,
                    scale=None, is_causal=False):
    """``softmax(q k^T * scale) v`` with the attention matrix materialised.

    q, k, v: (B, heads, M, head_dims) -> (B, heads, M, head_dims); the
    (B, heads, M, M) scores and probabilities are real tensors, as in the
    DeiT / timm code the paper measured. Same signature as
    ``F.scaled_dot_product_attention`` for what ViTs use.
    """
    if attn_mask is not None or is_causal:
        raise NotImplementedError('eager_attention serves plain ViT '
                                  'self-attention: no mask, not causal')
    scale = query.shape[-1]**-0.5 if scale is None else scale
    attn = (query * scale) @ key.transpose(-2, -1)
    attn = attn.softmax(dim=-1)
    if dropout_p > 0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ value


ATTENTION_IMPLS = {'eager': eager_attention,
                   'sdpa': F.scaled_dot_product_attention}


def set_attention(model, impl):
    """Make every mmpretrain ``MultiheadAttention`` in ``model`` use
    ``impl`` ('eager' or 'sdpa'); returns how many modules were switched.

    mmpretrain (torch >= 2) calls ``self.scaled_dot_product_attention``,
    bound at construction to ``F.scaled_dot_product_attention``; an instance
    attribute replaces it, nothing else changes.
    """
    from mmpretrain.models.utils.attention import MultiheadAttention
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention '{impl}', choose from "
                         f"{', '.join(ATTENTION_IMPLS)}")
    switched = 0
    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            module.scaled_dot_product_attention = ATTENTION_IMPLS[impl]
            switched += 1
    return switched


def set_timm_attention(model, impl):
    """Make every timm attention module in ``model`` use ``impl``: 'sdpa'
    is timm's fused path (``F.scaled_dot_product_attention``), 'eager' its
    own ``softmax(q k^T * scale) v`` with the (B, heads, M, M) matrix
    materialised, as :func:`eager_attention`. Returns how many modules were
    switched.

    timm's ``Attention`` reads its ``fused_attn`` attribute at every call
    (set at construction from ``timm.layers.use_fused_attn()``).
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention '{impl}', choose from "
                         f"{', '.join(ATTENTION_IMPLS)}")
    switched = 0
    for module in model.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = impl == 'sdpa'
            switched += 1
    return switched


@contextlib.contextmanager
def sdpa_backend(name):
    """Restrict ``F.scaled_dot_product_attention`` to one backend ('auto':
    PyTorch's own choice; 'efficient' exists on CUDA only)."""
    if name == 'auto':
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = {'flash': SDPBackend.FLASH_ATTENTION,
               'efficient': SDPBackend.EFFICIENT_ATTENTION,
               'math': SDPBackend.MATH}[name]
    with sdpa_kernel(backend):
        yield


# ------------------------------------------------------------------ models
class BackboneWithNeck(nn.Module):
    """backbone(x) -> (stride-16 map, ), then the neck if any."""

    def __init__(self, backbone, neck=None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, x):
        feats = self.backbone(x)
        return self.neck(feats) if self.neck is not None else feats


class TimmDeiT(nn.Module):
    """DeiT built from timm's ``VisionTransformer`` for ``img_size`` x
    ``img_size`` inputs, with the output of mmpretrain's
    ``out_type='featmap'``: x (B, 3, H, W) -> ((B, D, Hp, Wp), ), the
    final-normed patch tokens on the (H - 16) // 16 + 1 grid, class token
    dropped.

    The network is mmpretrain's DeiT (patch 16 without padding, class token,
    learned position embedding, pre-norm blocks with MLP ratio 4 and a qkv
    bias, final LayerNorm, no head): same parameters, same count.
    """

    def __init__(self, embed_dims, num_layers, num_heads, img_size,
                 attention='sdpa'):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=16, embed_dim=embed_dims,
            depth=num_layers, num_heads=num_heads, mlp_ratio=4.,
            qkv_bias=True, class_token=True, global_pool='token',
            num_classes=0)
        if set_timm_attention(self.vit, attention) != num_layers:
            raise RuntimeError(
                'this timm version has no attention modules with a '
                "'fused_attn' switch; the eager / SDPA rows need one: use "
                '--deit-impl mmpretrain or another timm version')

    def forward(self, x):
        tokens = self.vit.forward_features(x)  # (B, 1 + Hp * Wp, D)
        patches = tokens[:, self.vit.num_prefix_tokens:]
        hp, wp = [(size - 16) // 16 + 1 for size in x.shape[-2:]]
        # a view, as mmpretrain's featmap: no copy counted in the memory
        return (patches.reshape(x.shape[0], hp, wp, -1).permute(0, 3, 1, 2),
                )


@functools.lru_cache(maxsize=None)
def resolve_deit_impl(impl='auto'):
    """'mmpretrain' or 'timm' for ``impl`` ('auto': mmpretrain when its
    VisionTransformer imports, else timm); an error says what to install."""
    if impl not in DEIT_IMPLS:
        raise ValueError(f"unknown DeiT implementation '{impl}', choose "
                         f"from {', '.join(DEIT_IMPLS)}")
    if impl != 'auto':
        return impl
    try:
        from mmpretrain.models.backbones import VisionTransformer  # noqa
        return 'mmpretrain'
    except ImportError as mmpretrain_error:
        try:
            import timm  # noqa: F401
        except ImportError:
            raise ImportError(
                'the DeiT rows need mmpretrain or timm, and neither imports '
                f'({mmpretrain_error}); install one (pip install timm) or '
                'leave the DeiT models out of --models') from None
        return 'timm'


def build_model(name, resolution, neck='none', depth=None, deit_impl='auto'):
    """The benchmarked model ``name`` built for ``resolution`` x
    ``resolution`` inputs; its forward returns a tuple of maps. DeiT comes
    from ``deit_impl`` ('mmpretrain', 'timm' or 'auto')."""
    spec = MODEL_SPECS[name]
    dims = spec['embed_dims']
    if spec['family'] in HIERARCHICAL:
        if neck != 'none':
            raise ValueError(f'{name}: hierarchical backbones run with neck '
                             "'none' only in this benchmark")
        return BackboneWithNeck(build_hierarchical(spec, resolution, depth,
                                                   deit_impl))
    if spec['family'] == 'vim':
        from mmvim.models import Vim
        arch = spec['arch'] if depth is None else dict(embed_dims=dims,
                                                       depth=depth)
        backbone = Vim(arch, img_size=resolution, out_type='featmap',
                       out_indices=-1)
    elif resolve_deit_impl(deit_impl) == 'timm':
        arch = dict(DEIT_ARCHS[spec['arch']])
        if depth is not None:
            arch['num_layers'] = depth
        backbone = TimmDeiT(img_size=resolution,
                            attention=spec['attention'], **arch)
    else:
        from mmpretrain.models.backbones import VisionTransformer
        arch = spec['arch']
        if depth is not None:
            arch = dict(VisionTransformer.arch_zoo[arch], num_layers=depth)
        # padding=0: the same patch grid as Vim's, (H - 16) // 16 + 1
        backbone = VisionTransformer(
            arch=arch, img_size=resolution, out_type='featmap',
            with_cls_token=True, patch_cfg=dict(padding=0))
        set_attention(backbone, spec['attention'])
    neck_module = None
    if neck == 'fpn':
        from mmvim.models import SimpleFPN
        neck_module = SimpleFPN(in_channels=dims, out_channels=256,
                                num_outs=5)
    return BackboneWithNeck(backbone, neck_module)


class TimmSwin(torch.nn.Module):
    """Swin-T from timm (``SwinTransformer``, Swin-T's shapes, windows of 7,
    feature maps padded to whole windows) for the GPU machine, which has
    timm and no mmpretrain: forward returns the last stage's normed map
    (B, C, H, W), as mmpretrain's ``SwinTransformer(out_indices=(3, ))``."""

    def __init__(self, img_size, depths=(2, 2, 6, 2)):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer
        self.swin = SwinTransformer(
            img_size=img_size, patch_size=4, window_size=7, embed_dim=96,
            depths=tuple(depths), num_heads=(3, 6, 12, 24), num_classes=0,
            drop_path_rate=0.)

    def forward(self, x):
        return (self.swin.forward_features(x).permute(0, 3, 1, 2), )


def build_hierarchical(spec, resolution, depth=None, impl='auto'):
    """Hier-Vim, or Swin-T from ``impl`` ('mmpretrain', 'timm' or 'auto',
    as for DeiT), for ``resolution`` x ``resolution`` inputs, returning the
    last stage's normed map; ``depth`` caps the blocks of every stage
    (smoke tests)."""
    if spec['family'] == 'hier_vim':
        from mmvim.models import HierVim
        arch = spec['arch'] if depth is None else dict(
            HierVim.arch_zoo[spec['arch']],
            depths=tuple(min(d, depth) for d in
                         HierVim.arch_zoo[spec['arch']]['depths']))
        return HierVim(arch, out_indices=(3, ), drop_path_rate=0.)
    if resolve_deit_impl(impl) == 'timm':
        depths = [2, 2, 6, 2] if depth is None else \
            [min(d, depth) for d in (2, 2, 6, 2)]
        return TimmSwin(resolution, depths)
    from mmpretrain.models.backbones import SwinTransformer
    arch = spec['arch']
    if depth is not None:
        arch = dict(SwinTransformer.arch_zoo[arch])
        arch['depths'] = [min(d, depth) for d in arch['depths']]
    # pad_small_map: windows of 7 at every size, as in dense tasks
    return SwinTransformer(arch=arch, img_size=resolution, out_indices=(3, ),
                           drop_path_rate=0., pad_small_map=True)


def num_tokens(resolution, patch=16, family='vim'):
    """Tokens of the sequence a model mixes: Vim / DeiT's patch grid + the
    class token; Hier-Vim / Swin's first stage (stride 4, padded)."""
    if family in HIERARCHICAL:
        return (-(-resolution // 4))**2
    side = (resolution - patch) // patch + 1
    return side * side + 1  # + class token


# ------------------------------------------------------------- measurement
def is_out_of_memory(err):
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        sign in text for sign in ('out of memory', 'not enough memory',
                                  'CUBLAS_STATUS_ALLOC_FAILED'))


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def tensor_bytes(model, x):
    return x.numel() * x.element_size() + sum(
        t.numel() * t.element_size()
        for t in list(model.parameters()) + list(model.buffers()))


def profiled_peak_bytes(fn):
    """Peak of PyTorch's CPU allocations during ``fn()``, above what was
    allocated when it started, from the profiler's allocation trace; None
    when this PyTorch does not expose the trace."""
    from torch.profiler import ProfilerActivity, profile
    try:
        from torch._C._profiler import _EventType
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with profile(activities=[ProfilerActivity.CPU],
                     profile_memory=True) as prof:
            fn()
    allocations = []

    def walk(events):
        for event in events:
            if event.tag == _EventType.Allocation:
                allocations.append((event.start_time_ns,
                                    event.extra_fields.alloc_size))
            walk(event.children)

    try:
        walk(prof.profiler.kineto_results.experimental_event_tree())
    except AttributeError:
        return None
    current = peak = 0
    for _, size in sorted(allocations):
        current += size
        peak = max(peak, current)
    return peak


def make_step(model, x, mode, dtype, device, sdpa):
    """One benchmarked call: forward (no grad), or forward + backward."""
    autocast = (torch.autocast(device, dtype=DTYPES[dtype])
                if dtype != 'float32' else contextlib.nullcontext())

    def run():
        with sdpa_backend(sdpa), autocast:
            if mode == 'inference':
                with torch.no_grad():
                    return model(x)
            model.zero_grad(set_to_none=True)
            outs = model(x)
            loss = sum(out.float().mean() for out in outs)
        loss.backward()
        return loss

    return run


def measure(model, x, mode, dtype, args):
    """Median seconds per call and peak memory (MiB) of one config."""
    device = args.device
    step = make_step(model, x, mode, dtype, device, args.sdpa_backend)
    for _ in range(args.warmup):
        step()
    sync(device)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    if device == 'cuda':
        peak = torch.cuda.max_memory_allocated()
    else:
        # gradients of the last step are freed before the trace starts: the
        # trace cannot see frees of blocks allocated before it
        model.zero_grad(set_to_none=True)
        extra = profiled_peak_bytes(step)
        peak = None if extra is None else tensor_bytes(model, x) + extra
    if mode == 'train':
        model.zero_grad(set_to_none=True)
    return statistics.median(times), times, (
        None if peak is None else peak / 2**20)


def release_memory(device):
    """Hand a finished model's memory back (after an OOM, the exception's
    frames held it); the CPU allocator returns it on its own."""
    if device == 'cuda':
        gc.collect()
        torch.cuda.empty_cache()


def resolutions_of(args, mode):
    """The listed resolutions, then (if growing) ever larger ones."""
    listed = args.train_resolutions if mode == 'train' else args.resolutions
    yield from listed
    if args.grow_step > 0:
        res = listed[-1] + args.grow_step
        while res <= args.max_resolution:
            yield res
            res += args.grow_step


def new_row(name, neck, dtype, mode, res, args, scan_impl):
    """What identifies a row: model, config, resolution, batch."""
    spec = MODEL_SPECS[name]
    is_deit = spec['family'] in ('deit', 'swin')  # the timm / mmpretrain ones
    return dict(model=name, family=spec['family'],
                attention=spec.get('attention'),
                scan_impl=scan_impl if spec['family'] in ('vim', 'hier_vim')
                else None,
                deit_impl=resolve_deit_impl(getattr(args, 'deit_impl', 'auto'))
                if is_deit else None,
                neck=neck, dtype=dtype, mode=mode, resolution=res,
                tokens=num_tokens(res, family=spec['family']),
                batch=args.batch, compiled=bool(getattr(args, 'compile',
                                                        False)))


def run_one(name, neck, dtype, mode, res, args, scan_impl):
    """One row: build, measure, release; an out-of-memory is a row with
    status 'oom', any other error propagates."""
    row = new_row(name, neck, dtype, mode, res, args, scan_impl)
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = build_model(name, res, neck, args.depth,
                            row['deit_impl'] or 'auto').to(args.device)
        model.train(mode == 'train')
        if row['compiled']:
            model = torch.compile(model)
        x = torch.randn(args.batch, 3, res, res, device=args.device)
        seconds, times, memory = measure(model, x, mode, dtype, args)
        row.update(status='ok', seconds=seconds, times=times,
                   fps=args.batch / seconds, memory_mib=memory)
    except Exception as err:  # noqa: BLE001 (only OOM is handled)
        if not is_out_of_memory(err):
            raise
        row.update(status='oom', error=str(err).split('\n')[0][:200])
    model = x = None
    release_memory(args.device)
    # build + calls + release: what the time budget plans with
    row['wall_seconds'] = time.perf_counter() - start
    print(format_row(row), flush=True)
    return row


def expected_seconds(previous, name, res):
    """Wall time a row of ``name`` at ``res`` should take, from an earlier
    measured row of that model (None: no estimate): DeiT's attention grows
    with the square of the tokens, Vim linearly."""
    if previous is None or 'wall_seconds' not in previous:
        return None
    family = MODEL_SPECS[name]['family']
    power = 2 if family == 'deit' else 1  # Swin's windows: linear
    return previous['wall_seconds'] * (
        num_tokens(res, family=family) / previous['tokens'])**power


def run_grid(neck, dtype, mode, args, scan_impl, deadline=None,
             on_row=None, history=()):
    """Every model at every resolution of one (neck, dtype, mode), the
    models taking turns at each resolution (a slow spell of the machine
    then hits all of them alike). A model stops at its first out-of-memory,
    or, past the listed resolutions, at a call slower than
    ``--max-call-seconds``.

    ``deadline`` (a ``time.monotonic()`` value): a row expected to end after
    it is not started; it and the rest of the grid's listed rows come back
    with status 'skipped' and the reason. The estimate comes from the
    series' previous row, else from the latest row of the model in the same
    mode in ``history`` (earlier measured rows). ``on_row(row)`` is called
    after each measured row.
    """
    listed = args.train_resolutions if mode == 'train' else args.resolutions
    stopped, rows, last = set(), [], {}
    for row in history:
        if row['mode'] == mode and row['status'] == 'ok':
            last[row['model']] = row
    for res in resolutions_of(args, mode):
        running = [name for name in args.models if name not in stopped
                   and (neck == 'none' or MODEL_SPECS[name]['family']
                        not in HIERARCHICAL)]
        if not running:
            break
        for i, name in enumerate(running):
            if deadline is not None:
                left = deadline - time.monotonic()
                expected = expected_seconds(last.get(name), name, res) or 0.
                if left < 1 or expected > left:
                    reason = 'time budget used up' if left < 1 else (
                        f'time budget: {left:.0f} s left, this row needs '
                        f'about {expected:.0f} s')
                    return rows + skipped_rows(
                        running[i:], res, listed, stopped, reason, neck,
                        dtype, mode, args, scan_impl)
            row = run_one(name, neck, dtype, mode, res, args, scan_impl)
            rows.append(row)
            last[name] = row
            if on_row is not None:
                on_row(row)
            if row['status'] != 'ok' or (
                    row['seconds'] > args.max_call_seconds
                    and res >= max(listed)):
                stopped.add(name)
    return rows


def skipped_rows(names, res, listed, stopped, reason, neck, dtype, mode,
                 args, scan_impl):
    """Rows of status 'skipped': ``names`` at ``res``, then every model not
    stopped at the listed resolutions above ``res``."""
    pending = [(name, res) for name in names] + [
        (name, later) for later in listed if later > res
        for name in args.models if name not in stopped]
    rows = []
    print(f'skipping {len(pending)} rows of {neck} / {dtype} / {mode}: '
          f'{reason}', flush=True)
    for name, at in pending:
        row = new_row(name, neck, dtype, mode, at, args, scan_impl)
        row.update(status='skipped', reason=reason)
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------- reports
def format_memory(mib):
    return 'n/a' if mib is None else f'{mib:.0f}'


def format_row(row):
    head = (f"{row['model']:<14}{row['neck']:<6}{row['dtype']:<10}"
            f"{row['mode']:<10}{row['resolution']:>6}{row['tokens']:>7}"
            f"{row['batch']:>6}")
    if row['status'] != 'ok':
        label = 'OOM' if row['status'] == 'oom' else row['status']
        return head + f"{label:>12}{'':>10}{'':>12}"
    return head + (f"{row['fps']:>12.2f}{row['seconds'] * 1e3:>10.1f}"
                   f"{format_memory(row['memory_mib']):>12}")


TABLE_HEADER = (f"{'model':<14}{'neck':<6}{'dtype':<10}{'mode':<10}"
                f"{'res':>6}{'tokens':>7}{'batch':>6}{'images/s':>12}"
                f"{'ms/call':>10}{'memory MiB':>12}")


def baselines_of(vim_name):
    if vim_name in BASELINES:
        return BASELINES[vim_name]
    size = vim_name.split('-', 1)[1]
    return [f'deit-{size}-eager', f'deit-{size}-sdpa']


def compare(rows):
    """Vim against each DeiT of its size, same neck / dtype / mode /
    resolution: images / s ratio and memory fraction."""
    index = {(r['model'], r['neck'], r['dtype'], r['mode'], r['resolution']):
             r for r in rows}
    ratios = []
    for (name, neck, dtype, mode, res), vim in index.items():
        if not name.startswith('vim') and name not in BASELINES:
            continue
        for base in baselines_of(name):
            deit = index.get((base, neck, dtype, mode, res))
            if deit is None:
                continue
            entry = dict(vim=name, baseline=base, neck=neck, dtype=dtype,
                         mode=mode, resolution=res, fps_ratio=None,
                         memory_fraction=None, vim_status=vim['status'],
                         baseline_status=deit['status'])
            if vim['status'] == deit['status'] == 'ok':
                entry['fps_ratio'] = vim['fps'] / deit['fps']
                if vim['memory_mib'] and deit['memory_mib']:
                    entry['memory_fraction'] = \
                        vim['memory_mib'] / deit['memory_mib']
            ratios.append(entry)
    return sorted(ratios, key=lambda e: (e['mode'] != 'inference',
                                         e['neck'] != 'none', e['dtype'],
                                         e['vim'], e['baseline'],
                                         e['resolution']))


def check_targets(ratios, device):
    """The paper's 1248x1248 claims for Vim-Ti, where measured."""
    checks = []
    for e in ratios:
        if e['vim'] != 'vim-ti' or e['mode'] != 'inference' or \
                e['resolution'] != TARGET_RESOLUTION:
            continue
        check = dict(e, device=device)
        if e['baseline'] == 'deit-ti-eager':
            check['fps_target'] = f'>= {TARGET_FPS_RATIO}x'
            check['memory_target'] = f'<= {TARGET_MEMORY_FRACTION:.1%}'
            if e['fps_ratio'] is not None:
                check['fps_met'] = e['fps_ratio'] >= TARGET_FPS_RATIO
            if e['memory_fraction'] is not None:
                check['memory_met'] = \
                    e['memory_fraction'] <= TARGET_MEMORY_FRACTION
        else:  # SDPA: less memory; the speed ratio is only reported
            check['memory_target'] = '< 100%'
            if e['memory_fraction'] is not None:
                check['memory_met'] = e['memory_fraction'] < 1.
        if e['baseline_status'] == 'oom' and e['vim_status'] == 'ok':
            check.update(fps_met=True, memory_met=True,
                         note='the baseline ran out of memory')
        checks.append(check)
    return checks


def print_report(rows, ratios, targets, info):
    print(f"\n{info['device_name']} ({info['device']}), batch "
          f"{info['batch']}, Vim scan: {info['scan_impl']}, SDPA backend: "
          f"{info['sdpa_backend']}")
    print(TABLE_HEADER)
    for row in rows:
        print(format_row(row))
    if ratios:
        print('\nagainst the baselines: Vim vs DeiT, Hier-Vim vs Swin '
              '(images/s ratio, memory fraction)')
        print(f"{'model':<12}{'baseline':<15}{'neck':<6}{'dtype':<10}"
              f"{'mode':<10}{'res':>6}{'speed':>9}{'memory':>9}")
        for e in ratios:
            speed = (f"{e['fps_ratio']:.2f}x" if e['fps_ratio'] is not None
                     else 'DeiT OOM' if e['baseline_status'] == 'oom' else
                     'Vim OOM' if e['vim_status'] == 'oom' else
                     'skipped' if 'skipped' in (e['vim_status'],
                                                e['baseline_status']) else
                     '-')
            memory = ('-' if e['memory_fraction'] is None else
                      f"{e['memory_fraction']:.1%}")
            print(f"{e['vim']:<12}{e['baseline']:<15}{e['neck']:<6}"
                  f"{e['dtype']:<10}{e['mode']:<10}{e['resolution']:>6}"
                  f'{speed:>9}{memory:>9}')
    if targets:
        print(f'\npaper targets at {TARGET_RESOLUTION}x{TARGET_RESOLUTION} '
              f"(measured on {info['device_name']})")
        for t in targets:
            print(f"  vim-ti vs {t['baseline']} {t['neck']} {t['dtype']}: "
                  f"speed {t.get('fps_target', 'reported')} -> "
                  f"{t.get('fps_met', 'n/a')}, memory {t['memory_target']} "
                  f"-> {t.get('memory_met', 'n/a')}")
    elif info['device'] == 'cuda':
        print(f'\nno {TARGET_RESOLUTION}x{TARGET_RESOLUTION} comparison in '
              "this grid: the paper's targets are not checked")


def plot(rows, info, path):
    """images / s (log) and memory against resolution, one row of axes per
    (mode, neck), one line per (model, dtype)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    # skipped rows have nothing to draw; points go left to right
    rows = sorted((r for r in rows if r['status'] in ('ok', 'oom')),
                  key=lambda r: r['resolution'])
    panels = sorted({(r['mode'], r['neck']) for r in rows},
                    key=lambda p: (p[0] != 'inference', p[1] != 'none'))
    memories = [r['memory_mib'] for r in rows if r.get('memory_mib')]
    unit, scale = ('GiB', 1024) if max(memories, default=0) > 2048 else \
        ('MiB', 1)
    fig, axes = plt.subplots(len(panels), 2, squeeze=False,
                             figsize=(11, 3.8 * len(panels)))
    colors = dict(zip(MODEL_SPECS, plt.rcParams['axes.prop_cycle']
                      .by_key()['color']))
    styles = {'float32': '-', 'bfloat16': '--', 'float16': ':'}
    order = {name: i for i, name in enumerate(MODEL_SPECS)}
    for (mode, neck), (ax_fps, ax_mem) in zip(panels, axes):
        panel = [r for r in rows if (r['mode'], r['neck']) == (mode, neck)]
        resolutions = sorted({r['resolution'] for r in panel})
        series = sorted({(r['model'], r['dtype']) for r in panel},
                        key=lambda s: (order[s[0]], s[1]))
        for name, dtype in series:
            pts = [r for r in panel if (r['model'], r['dtype']) ==
                   (name, dtype)]
            ok = [r for r in pts if r['status'] == 'ok']
            oom = [r['resolution'] for r in pts if r['status'] == 'oom']
            label = f'{name} {dtype}' + (f' (OOM at {oom[0]})' if oom
                                         else '')
            style = dict(color=colors[name], linestyle=styles[dtype],
                         marker='o', markersize=4)
            ax_fps.plot([r['resolution'] for r in ok],
                        [r['fps'] for r in ok], label=label, **style)
            mem = [r for r in ok if r['memory_mib'] is not None]
            ax_mem.plot([r['resolution'] for r in mem],
                        [r['memory_mib'] / scale for r in mem], label=label,
                        **style)
        title = f"{'backbone' if neck == 'none' else 'backbone + FPN'}, " \
                f'{mode}'
        batches = sorted({r['batch'] for r in panel})
        if len(batches) == 1:  # runs merged from several grids may differ
            title += f', batch {batches[0]}'
        ax_fps.set(title=f'{title}: speed', xlabel='resolution (px)',
                   ylabel='images / s (log)', yscale='log')
        # 1-2-5 ticks: a curve may span less than a decade
        ax_fps.yaxis.set_major_locator(LogLocator(subs=(1., 2., 5.)))
        ax_fps.yaxis.set_major_formatter(FuncFormatter(
            lambda value, _: f'{value:g}'))
        ax_fps.yaxis.set_minor_formatter(FuncFormatter(lambda *_: ''))
        ax_mem.set(title=f'{title}: peak memory', xlabel='resolution (px)',
                   ylabel=unit, ylim=(0, None))
        for ax in (ax_fps, ax_mem):
            ax.set_xticks(resolutions)
            ax.tick_params(axis='x', labelrotation=45)
            ax.grid(True, alpha=.3)
        ax_mem.legend(fontsize=7)
    fig.suptitle(f"{info['device_name']}, batch {info['batch']}, Vim scan "
                 f"{info['scan_impl']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def device_info(args, scan_impl):
    if args.device == 'cuda':
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        threads = torch.get_num_threads()
        name = f"CPU {name}, {threads} thread{'s' if threads > 1 else ''}"
    deit = any(MODEL_SPECS[m]['family'] in ('deit', 'swin')
               for m in args.models)
    return dict(
        device=args.device, device_name=name, torch=torch.__version__,
        threads=torch.get_num_threads(), scan_impl=scan_impl,
        deit_impl=resolve_deit_impl(args.deit_impl) if deit else None,
        sdpa_backend=args.sdpa_backend, batch=args.batch,
        warmup=args.warmup, repeats=args.repeats, depth_override=args.depth,
        compiled=args.compile,
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        cudnn_benchmark=args.device == 'cuda',
        memory_definition=MEMORY_DEFINITION[args.device],
        time_definition=TIME_DEFINITION,
        half_precision='torch.autocast with float32 weights',
        date=datetime.date.today().isoformat(),
        # other work on the machine slows the CPU numbers: say how busy it was
        load_average_at_start=list(os.getloadavg()))


def setup(args):
    """Threads, scan implementation, DeiT code and cuDNN for a run of
    ``args``; returns (scan_impl, info)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    # the scan dispatcher reads the variable at each call
    os.environ['MMVIM_SCAN_IMPL'] = args.scan_impl
    import mmvim  # noqa: F401 (registers Vim, SimpleFPN, LN2d)
    from mmvim.ops import select_scan_impl
    scan_impl = select_scan_impl(args.device)
    if args.device == 'cuda':
        torch.backends.cudnn.benchmark = True
        if scan_impl == 'ref' and any(m.startswith('vim')
                                      for m in args.models):
            print('WARNING: Vim runs with the pure-PyTorch reference scan '
                  '(a Python loop over the tokens): its numbers say nothing '
                  'about Vim. The CUDA kernel is not in use (the warning '
                  'above says why); --scan-impl cuda makes that an error.')
    return scan_impl, device_info(args, scan_impl)


def save_results(rows, info, out, plot_path=None):
    """Ratios and targets of ``rows``, all written as JSON to ``out`` (and
    the PNG to ``plot_path``); returns (ratios, targets)."""
    ratios = compare(rows)
    targets = check_targets(ratios, info['device_name'])
    for path in (out, plot_path):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    # written whole and renamed: a run stopped mid-write keeps the last file
    with open(out + '.tmp', 'w') as f:
        json.dump(dict(info, rows=rows, ratios=ratios, targets=targets), f,
                  indent=2)
    os.replace(out + '.tmp', out)
    if plot_path:
        plot(rows, info, plot_path)
    return ratios, targets


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            result = json.load(f)
        print_report(result['rows'], result['ratios'], result['targets'],
                     result)
        plot(result['rows'], result, args.plot)
        print(f'\nwrote {args.plot}')
        return
    deadline = None if args.time_budget is None else \
        time.monotonic() + args.time_budget
    scan_impl, info = setup(args)
    print(TABLE_HEADER)
    rows, measured = [], []

    def save_partial(row):
        measured.append(row)
        save_results(measured, info, args.out)

    for mode in args.modes:
        for neck in args.necks:
            for dtype in args.dtypes:
                rows += run_grid(neck, dtype, mode, args, scan_impl,
                                 deadline=deadline, on_row=save_partial)
    info['load_average_at_end'] = list(os.getloadavg())
    ratios = compare(rows)
    print_report(rows, ratios, check_targets(ratios, info['device_name']),
                 info)
    save_results(rows, info, args.out, args.plot)
    print(f'\nwrote {args.out} and {args.plot}')


if __name__ == '__main__':
    main()
