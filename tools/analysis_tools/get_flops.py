"""FLOPs and parameters of mmvim configs, the selective scan included.

    python tools/analysis_tools/get_flops.py [CONFIG ...] [--shape H [W]]
        [--backbone-only] [--out flops.json]

Without CONFIGs: every ``configs/vim/*.py`` and ``configs/hier_vim/*.py``. Each model is built from its
config (no weights loaded) and traced on one image of ``--shape`` (default:
the resolution the config is made for: the backbone's ``img_size``; for a
backbone without one, the crop of a segmentation config or the test scale
of a detection config, else 224) with
mmengine's ``FlopAnalyzer``: the fvcore convention, one multiply-add is one
FLOP and elementwise ops are not counted. The backbone is reported alone,
and downstream models as a whole too (forward in ``mode='tensor'``).

A FLOP counter sees no further than the traced graph: the selective scan is
an autograd Function around a C++/CUDA kernel (or, for the reference, a
Python loop whose elementwise ops the counter ignores), so it would count
zero. Here every mixer's scan goes through one traced op,
``BiSelectiveScanCount`` (both directions) or ``SelectiveScanCount`` (the
unidirectional mixers of the ablations), whose handle counts the paper's
SSM cost per direction, ``3 M E N`` (discretisation and state update) +
``M E N`` (output), M tokens, E = expand * D inner channels, N states. The
scan total is checked against the same formula evaluated from the config
alone (depth, directions, tokens of the patch grid plus class tokens, D,
N; for Hier-Vim per stage, its blocks scanning all tokens of the stage's
map).
"""
import argparse
import contextlib
import glob
import os.path as osp
import sys
from collections import Counter

import torch
import torch.nn as nn

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCAN_OP = 'prim::PythonOp.BiSelectiveScanCount'
UNI_SCAN_OP = 'prim::PythonOp.SelectiveScanCount'
# the kernel's operator, traced as a nested node inside
# BiSelectiveScanCount (counted there) or, if called directly, one direction
KERNEL_SCAN_OP = 'mmvim::scan_fwd'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='*',
                        help='config files (default: configs/vim/*.py)')
    parser.add_argument('--shape', nargs='+', type=int,
                        help='input H [W] (default: the backbone img_size)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='skip the whole downstream model')
    parser.add_argument('--out', help='also write the results as JSON')
    args = parser.parse_args(argv)
    if not args.configs:
        args.configs = sorted(
            glob.glob(osp.join(ROOT, 'configs', 'vim', '*.py')) +
            glob.glob(osp.join(ROOT, 'configs', 'hier_vim', '*.py')))
    if args.shape and len(args.shape) not in (1, 2):
        parser.error('--shape takes H or H W')
    return args


# ------------------------------------------------------------ scan counting
def ssm_flops(tokens, inner_channels, d_state, batch=1):
    """The paper's SSM cost of ONE scan direction: ``3 M E N + M E N``
    (E = 2D for Vim, written ``3M(2D)N + M(2D)N`` in the paper)."""
    return batch * (3 * tokens * inner_channels * d_state +
                    tokens * inner_channels * d_state)


def _bi_scan_flop_jit(inputs, outputs):
    """Handle of BiSelectiveScanCount: u (b, E, L), A (E, N); both
    directions."""
    from mmengine.analysis.jit_handles import get_shape
    batch, inner, tokens = get_shape(inputs[0])
    d_state = get_shape(inputs[2])[1]
    return 2 * ssm_flops(tokens, inner, d_state, batch)


def _scan_flop_jit(inputs, outputs):
    """Handle of SelectiveScanCount: u (b, E, L), A (E, N); one
    direction."""
    from mmengine.analysis.jit_handles import get_shape
    batch, inner, tokens = get_shape(inputs[0])
    d_state = get_shape(inputs[2])[1]
    return ssm_flops(tokens, inner, d_state, batch)


def _counted_around(inputs, outputs):
    """Handle of the kernel's scan_fwd op, traced nested inside
    BiSelectiveScanCount, which counts it (a handle of None would not
    silence it: mmengine ignores PythonOps by kind, not by name)."""
    return Counter()


class BiSelectiveScanCount(torch.autograd.Function):
    """``bi_selective_scan`` as one traced node (a PythonOp the FLOP handle
    recognises), whichever implementation computes it underneath."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, u_b, delta_b, A_b, B_b, C_b, D_b,
                z, delta_bias, delta_bias_b, delta_softplus, divide_out):
        from mmvim.ops import bi_selective_scan
        return bi_selective_scan(
            u, delta, A, B, C, D, u_b, delta_b, A_b, B_b, C_b, D_b, z=z,
            delta_bias=delta_bias, delta_bias_b=delta_bias_b,
            delta_softplus=delta_softplus, divide_out=divide_out)


def _counted_bi_selective_scan(u, delta, A, B, C, D, u_b, delta_b, A_b, B_b,
                               C_b, D_b, z=None, delta_bias=None,
                               delta_bias_b=None, delta_softplus=False,
                               divide_out=True):
    return BiSelectiveScanCount.apply(u, delta, A, B, C, D, u_b, delta_b,
                                      A_b, B_b, C_b, D_b, z, delta_bias,
                                      delta_bias_b, delta_softplus,
                                      divide_out)


class SelectiveScanCount(torch.autograd.Function):
    """``selective_scan`` (one direction) as one traced node."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        from mmvim.ops import selective_scan
        return selective_scan(u, delta, A, B, C, D, z=z,
                              delta_bias=delta_bias,
                              delta_softplus=delta_softplus)


def _counted_selective_scan(u, delta, A, B, C, D=None, z=None,
                            delta_bias=None, delta_softplus=False):
    return SelectiveScanCount.apply(u, delta, A, B, C, D, z, delta_bias,
                                    delta_softplus)


@contextlib.contextmanager
def counted_scan():
    """Route every ``BiMambaMixer`` through its readable path (so that the
    tracer sees each linear layer and conv, which the fused kernel path
    hides inside one autograd function) with each scan as one counted node
    (for tracing only: no backward): the reference path of Vim's mixer and
    the shared-conv paths of the ablations ('ssm', 'none')."""
    from mmvim.models.layers import bimamba_mixer
    counted = dict(select_scan_impl=lambda device: 'ref',
                   bi_selective_scan_ref=_counted_bi_selective_scan,
                   bi_selective_scan=_counted_bi_selective_scan,
                   selective_scan=_counted_selective_scan)
    saved = {name: getattr(bimamba_mixer, name) for name in counted}
    for name, value in counted.items():
        setattr(bimamba_mixer, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(bimamba_mixer, name, value)


def count_flops(model, inputs):
    """FLOPs of ``model(*inputs)`` with the scan counted.

    Returns dict(flops=total, by_operator={op: flops}, params=count,
    uncounted={op: occurrences}) (uncounted: elementwise ops and the like,
    which the fvcore convention leaves out).
    """
    from mmengine.analysis import FlopAnalyzer, parameter_count
    with counted_scan(), torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.set_op_handle(**{SCAN_OP: _bi_scan_flop_jit,
                                  UNI_SCAN_OP: _scan_flop_jit,
                                  KERNEL_SCAN_OP: _counted_around})
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        by_operator = dict(analyzer.by_operator())
        total = analyzer.total()
        uncounted = dict(analyzer.unsupported_ops())
    scans = [by_operator.pop(op) for op in (
        'PythonOp.BiSelectiveScanCount', 'PythonOp.SelectiveScanCount')
        if op in by_operator]
    if scans:
        by_operator['selective_scan'] = sum(scans)
    return dict(flops=total, by_operator=by_operator,
                params=parameter_count(model)[''], uncounted=uncounted)


def vim_ssm_flops_by_formula(backbone, shape, batch=1):
    """The paper's formula for a Vim backbone at input ``shape`` (H, W):
    depth x directions x (3 M E N + M E N), M = patches + class tokens
    (0, 1 or 2), two directions for the bidirectional mixers ('ssm_conv',
    'ssm'), one for the unidirectional ones ('none', and 'layers', whose
    layers scan one direction each)."""
    grid = backbone.patch_embed.grid_size(tuple(shape))
    tokens = grid[0] * grid[1] + backbone.num_cls_tokens
    mixer = backbone.layers[0].mixer
    directions = 2 if mixer.bidirectional in ('ssm_conv', 'ssm') else 1
    return backbone.depth * directions * ssm_flops(
        tokens, mixer.d_inner, mixer.d_state, batch), tokens


def hier_vim_ssm_flops_by_formula(backbone, shape, batch=1):
    """The same formula for a Hier-Vim backbone: each stage scans all its
    tokens, M_i = ceil(H / 4 / 2^i) x ceil(W / 4 / 2^i) (odd maps padded),
    E_i = expand x C_i. Returns (flops, tokens of the first stage)."""
    patch = backbone.patch_embed.projection.stride
    h, w = -(-shape[0] // patch[0]), -(-shape[1] // patch[1])
    total, first = 0, h * w
    for stage in backbone.stages:
        mixer = stage.blocks[0].mixer
        total += len(stage.blocks) * 2 * ssm_flops(h * w, mixer.d_inner,
                                                   mixer.d_state, batch)
        h, w = -(-h // 2), -(-w // 2)
    return total, first


# ---------------------------------------------------------------- configs
class TensorMode(nn.Module):
    """``model(x, data_samples, mode='tensor')`` as a plain forward."""

    def __init__(self, model, data_samples=None):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, x):
        return self.model(x, self.data_samples, mode='tensor')


def _data_samples(model, shape):
    """Detectors need image metadata even in tensor mode."""
    try:
        from mmdet.models.detectors import BaseDetector
        from mmdet.structures import DetDataSample
    except ImportError:
        return None
    if not isinstance(model, BaseDetector):
        return None
    shape = tuple(shape)
    return [DetDataSample(metainfo=dict(
        img_shape=shape, ori_shape=shape, pad_shape=shape,
        batch_input_shape=shape, scale_factor=(1., 1.)))]


def build_from_config(path):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    import mmvim  # noqa: F401 (registers Vim and friends)
    cfg = Config.fromfile(path)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    model = MODELS.build(cfg.model)
    model.eval()
    return model, cfg


def config_input_shape(cfg):
    """(H, W) a config is made for, for backbones without an ``img_size``:
    the crop of a segmentation config (its data preprocessor's ``size``),
    the test scale of a detection config (its test ``Resize``), else
    ImageNet's 224."""
    size = cfg.model.get('data_preprocessor', {}).get('size')
    if size:
        return tuple(size)
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get(
        'pipeline', [])
    for step in pipeline:
        if step.get('type') == 'Resize' and step.get('scale'):
            width, height = step['scale']  # mmcv scales are (w, h)
            return (height, width)
    return (224, 224)


def input_shape(model, shape, cfg=None):
    if shape:
        return (shape[0], shape[-1])
    if hasattr(model.backbone, 'img_size'):
        return tuple(model.backbone.img_size)
    # hierarchical backbones take any size: what the config is made for
    return config_input_shape(cfg) if cfg is not None else (224, 224)


def analyse_config(path, shape=None, backbone_only=False):
    model, cfg = build_from_config(path)
    hw = input_shape(model, shape, cfg)
    x = torch.randn(1, 3, *hw)
    backbone = count_flops(model.backbone, (x, ))
    result = dict(config=osp.relpath(path, ROOT) if path.startswith(ROOT)
                  else path, input=list(hw), backbone=backbone)
    formula = None
    if type(model.backbone).__name__ == 'HierVim':
        formula, tokens = hier_vim_ssm_flops_by_formula(model.backbone, hw)
    elif hasattr(model.backbone, 'layers') and \
            hasattr(model.backbone.layers[0], 'mixer'):
        formula, tokens = vim_ssm_flops_by_formula(model.backbone, hw)
    if formula is not None:
        result.update(tokens=tokens, ssm_flops_formula=formula,
                      ssm_flops_counted=backbone['by_operator'].get(
                          'selective_scan', 0))
    if not backbone_only:
        try:
            result['model'] = count_flops(
                TensorMode(model, _data_samples(model, hw)), (x, ))
        except Exception as err:  # noqa: BLE001 (reported, not hidden)
            result['model_error'] = f'{type(err).__name__}: {err}'[:300]
    return result


def print_table(results):
    names = [osp.basename(r['config']) for r in results]
    width = max(map(len, names), default=6) + 2
    print(f"\n{'config':<{width}}{'input':>10}{'tokens':>7}"
          f"{'bb params M':>12}{'bb GFLOPs':>10}{'scan GFLOPs':>12}"
          f"{'formula':>9}{'params M':>10}{'GFLOPs':>9}")
    for name, r in zip(names, results):
        bb = r['backbone']
        scan = r.get('ssm_flops_counted')
        formula = r.get('ssm_flops_formula')
        model = r.get('model')
        print(f"{name:<{width}}{'x'.join(map(str, r['input'])):>10}"
              f"{r.get('tokens', '-'):>7}{bb['params'] / 1e6:>12.2f}"
              f"{bb['flops'] / 1e9:>10.2f}"
              f"{(scan or 0) / 1e9:>12.3f}{(formula or 0) / 1e9:>9.3f}"
              + (f"{model['params'] / 1e6:>10.2f}{model['flops'] / 1e9:>9.1f}"
                 if model else f"{'n/a':>10}{'n/a':>9}"))
        if 'model_error' in r:
            print(f"    whole model not traced: {r['model_error']}")
    print('\nbb = backbone; GFLOPs count one multiply-add as one FLOP; '
          'scan = selective scan counted in the trace, formula = depth x '
          'directions x (3MEN + MEN)')


def main(argv=None):
    args = parse_args(argv)
    results = [analyse_config(path, args.shape, args.backbone_only)
               for path in args.configs]
    print_table(results)
    mismatched = [r['config'] for r in results
                  if r.get('ssm_flops_counted') != r.get('ssm_flops_formula')]
    if args.out:
        from mmvim.engine import write_json
        write_json(args.out, results)
        print(f'wrote {args.out}')
    if mismatched:
        print('the counted scan FLOPs differ from the formula for: '
              + ', '.join(mismatched), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
