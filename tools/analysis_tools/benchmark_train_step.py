"""Seconds and peak memory of one training step of an mmvim config.

    python tools/analysis_tools/benchmark_train_step.py CONFIG [--batch N]
        [--warmup W] [--repeats R] [--threads T] [--device cpu|cuda]
        [--shape H W] [--cfg-options key=value ...] [--out results.json]

Any mmvim experiment config: segmentation (mmseg), detection (mmdet) or
classification (mmpretrain), as its ``default_scope`` says. The config's
real model and optimizer wrapper are built as mmengine's ``Runner`` builds
them (the model from the scope's registry, ``init_weights``, SyncBN
reverted to BN in a single process; ``build_optim_wrapper`` with the
config's constructor, layer decay and gradient clipping), without a
Runner, a dataset or a work dir. The learning-rate schedulers are not
built: the optimizer runs at its base lr, which costs the same. A
backbone ``Pretrained`` init whose checkpoint file is absent is dropped
(random weights; a step costs the same) and said so.

The batch is synthetic, in the format the config's training pipeline hands
to the model, at the config's training input size (``--shape`` overrides
it): the size-fixing step of the train pipeline (a crop's ``crop_size``,
the bound of a resize's ``scale``, for LSJ the 1024x1024 crop; the largest
choice of a random choice), else the backbone's ``img_size``. Each image
is uint8 noise in (3, H, W); its annotations are passed through the
pipeline's own packing transform (``PackSegInputs`` / ``PackDetInputs`` /
``PackInputs``): a label map of 16x16-pixel regions (``gt_sem_seg``),
``NUM_INSTANCES`` elliptic objects with boxes, labels and masks of the
type ``LoadAnnotations`` gives (``BitmapMasks``, or ``PolygonMasks``
with ``poly2mask=False``) in ``gt_instances``, or a ``gt_label``. Images
and labels are drawn from a fixed seed. A list of these, as mmengine's
``pseudo_collate`` gives them, goes to ``model.train_step`` as in the
Runner's training loop: data preprocessor (normalisation, padding, batch
augments), forward, losses, backward, gradient clipping, optimizer step.

Measurement: ``--warmup`` untimed steps, then ``--repeats`` steps each
timed alone with ``time.perf_counter`` (after ``torch.cuda.synchronize`` on
CUDA); the median is reported, and the fastest step (on a machine shared
with other work, the least disturbed one). Every step also records its
loss and the L2 norm of the change of the trained parameters made by its
optimizer step (a copy of the parameters taken inside ``optimizer.step``,
after backward has freed the activations; that check is timed apart and
not counted in the step). Memory: the peak resident set size of the process
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``: Python, the libraries, the
model, the optimizer state and the largest step), and on CUDA the peak of
PyTorch's allocator over the steps.

A table goes to stdout, everything (command, date, device, threads, load
average at the start and end) to JSON. Timings are for reading, never
asserted by tests.
"""
import argparse
import copy
import datetime
import math
import os
import os.path as osp
import platform
import resource
import shlex
import statistics
import sys
import time

import numpy as np
import torch
from mmengine.config import DictAction

import mmvim  # noqa: F401  (registers Vim, SimpleFPN, LN2d, the constructors)
from mmvim.engine import (exit_on_user_error, load_config,
                          quiet_known_warnings, write_json)

SCOPES = ('mmseg', 'mmdet', 'mmpretrain')
# COCO train2017 holds 860k instances in 118k images: 7.3 per image
NUM_INSTANCES = 7
LABEL_REGION = 16  # side in pixels of the regions of a synthetic label map
SEED = 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='an mmvim experiment config')
    parser.add_argument('--batch', type=int,
                        help='images per step (default: the config\'s '
                        'train_dataloader.batch_size, per process)')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed steps first')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed steps')
    parser.add_argument('--threads', type=int,
                        help='CPU threads of PyTorch (default: its own '
                        'choice)')
    parser.add_argument('--device', default='cuda'
                        if torch.cuda.is_available() else 'cpu',
                        choices=['cpu', 'cuda'])
    parser.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                        help='image size (default: the config\'s training '
                        'input size)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, e.g. '
        'model.backbone.drop_path_rate=0')
    parser.add_argument('--out', help='JSON path (default: work_dirs/'
                        'benchmark_train_step/CONFIG_NAME.json)')
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        parser.error('--batch must be at least 1')
    if args.warmup < 0 or args.repeats < 1:
        parser.error('--warmup must be 0 or more and --repeats at least 1')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be at least 1')
    if args.shape is not None and min(args.shape) < 1:
        parser.error('--shape takes a positive height and width')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but no GPU is visible to PyTorch; use '
                     '--device cpu')
    if args.out is None:
        name = osp.splitext(osp.basename(args.config))[0]
        args.out = osp.join('work_dirs', 'benchmark_train_step',
                            f'{name}.json')
    return args


def config_scope(cfg, path):
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise SystemExit(
            f'error: {path} has default_scope={scope!r}; this tool takes '
            f'an experiment config of {", ".join(SCOPES)} (a file of '
            'configs/vim or configs/hier_vim, not a _base_ part)')
    missing = [key for key in ('train_dataloader', 'optim_wrapper')
               if key not in cfg]
    if missing:
        raise SystemExit(f'error: {path} has no {" and no ".join(missing)}: '
                         'give a training config')
    return scope


def train_pipeline(cfg):
    """The train dataset's pipeline (also of a wrapped dataset)."""
    dataset = cfg.train_dataloader.dataset
    while 'pipeline' not in dataset and 'dataset' in dataset:
        dataset = dataset.dataset
    return dataset.get('pipeline', [])


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def _resize_bound(scale, keep_ratio):
    """(H, W) of the largest image a resize to ``scale`` (mmcv's (w, h))
    gives: with ``keep_ratio`` a landscape image filling the bound."""
    width, height = _pair(scale)
    if keep_ratio:
        return min(width, height), max(width, height)
    return height, width


def step_size(step, scope):
    """(H, W) of the images after the pipeline step ``step``, or None when
    the step leaves the size open (flips, photometric changes, relative
    crops) or draws it at random without a bound."""
    kind = step.get('type')
    if kind == 'RandomCrop':
        crop = _pair(step['crop_size'])
        if scope == 'mmseg':
            return crop  # mmseg: (h, w)
        if scope == 'mmdet':
            crop_type = step.get('crop_type', 'absolute')
            if crop_type == 'absolute':
                return crop[1], crop[0]  # mmdet: (w, h)
            if crop_type == 'absolute_range':
                return crop[1], crop[1]  # sides drawn up to crop_size[1]
            return None
        return crop  # mmpretrain: (h, w)
    if kind == 'RandomResizedCrop':
        return _pair(step['scale'])  # mmpretrain: (h, w)
    if kind == 'CenterCrop':
        width, height = _pair(step['crop_size'])  # mmcv: (w, h)
        return height, width
    if kind in ('Resize', 'FixedShapeResize') and step.get('scale'):
        return _resize_bound(step['scale'], step.get('keep_ratio', False))
    if kind == 'RandomResize' and step.get('scale'):
        # drawn around scale by ratio_range, so no bound; a later crop fixes
        # the size (the recipes here crop), else the ratio-1 size
        scale = step['scale']
        if isinstance(scale[0], (list, tuple)):
            return None
        return _resize_bound(scale, step.get('keep_ratio', False))
    if kind == 'RandomChoiceResize':
        sizes = [_resize_bound(scale, step.get('keep_ratio', False))
                 for scale in step['scales']]
        return max(sizes, key=lambda hw: hw[0] * hw[1])
    if kind == 'RandomChoice':
        sizes = [pipeline_size(list(choice), scope)[0]
                 for choice in step['transforms']]
        sizes = [size for size in sizes if size is not None]
        return max(sizes, key=lambda hw: hw[0] * hw[1]) if sizes else None
    return None


def pipeline_size(pipeline, scope):
    """(H, W) fixed by the last size-fixing step of ``pipeline`` and a
    description of that step, or (None, None)."""
    for step in reversed(pipeline):
        size = step_size(step, scope)
        if size is not None:
            described = {k: v for k, v in step.items()
                         if k in ('type', 'crop_size', 'crop_type', 'scale',
                                  'scales', 'keep_ratio')}
            return tuple(int(s) for s in size), described
    return None, None


def train_input_size(cfg, scope, model):
    """(H, W) of one training image of ``cfg`` and where it comes from."""
    size, step = pipeline_size(train_pipeline(cfg), scope)
    if size is not None:
        return size, f'train pipeline {step}'
    img_size = getattr(getattr(model, 'backbone', None), 'img_size', None)
    if img_size is not None:
        return tuple(_pair(img_size)), 'model.backbone.img_size'
    raise SystemExit(
        'error: the training input size of this config cannot be read from '
        'its train pipeline (no crop or bounded resize) nor from a backbone '
        'img_size; pass it with --shape H W')


def pack_step(cfg):
    """The config's packing transform, built in the config's scope."""
    from mmengine.registry import TRANSFORMS
    for step in reversed(train_pipeline(cfg)):
        if step.get('type', '').startswith('Pack'):
            return TRANSFORMS.build(step)
    raise SystemExit('error: the train pipeline of this config has no '
                     'Pack* step (PackSegInputs, PackDetInputs, PackInputs)')


def load_annotations(cfg):
    """The settings of the train pipeline's ``LoadAnnotations`` step."""
    for step in train_pipeline(cfg):
        if step.get('type') == 'LoadAnnotations':
            return step
    return {}


def num_classes(model, scope):
    if scope == 'mmseg':
        return model.decode_head.num_classes
    if scope == 'mmpretrain':
        return model.head.num_classes
    head = model.roi_head.bbox_head if hasattr(model, 'roi_head') else \
        model.bbox_head
    if isinstance(head, torch.nn.ModuleList):
        head = head[0]
    return head.num_classes


def ellipses(rng, height, width, count):
    """``count`` axis-aligned ellipses: boxes (count, 4) float32 x0 y0 x1 y1,
    each the ellipse's bounding box, sides 5-50% of the image's."""
    sides = rng.uniform(0.05, 0.5, size=(count, 2)) * (width, height)
    x0 = rng.uniform(0, width - sides[:, 0])
    y0 = rng.uniform(0, height - sides[:, 1])
    return np.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]],
                    axis=1).astype(np.float32)


def ellipse_masks(boxes, height, width, polygons):
    from mmdet.structures.mask import BitmapMasks, PolygonMasks
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    radii = (boxes[:, 2:] - boxes[:, :2]) / 2
    if polygons:
        angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        outline = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return PolygonMasks([[(c + r * outline).reshape(-1)]
                             for c, r in zip(centres, radii)], height, width)
    ys, xs = np.mgrid[:height, :width] + 0.5
    masks = [((xs - cx) / rx)**2 + ((ys - cy) / ry)**2 <= 1
             for (cx, cy), (rx, ry) in zip(centres, radii)]
    return BitmapMasks(np.stack(masks).astype(np.uint8), height, width)


def synthetic_sample(index, size, scope, classes, loading, pack):
    """One training sample as the pipeline's packing step gives it, for an
    image of ``size`` (H, W); random from a seed of ``index``. ``loading``:
    the settings of the pipeline's ``LoadAnnotations``."""
    rng = np.random.default_rng(SEED + index)
    height, width = size
    results = dict(
        img=rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8),
        img_path=f'synthetic_{index}.jpg', sample_idx=index, img_id=index,
        ori_shape=(height, width), img_shape=(height, width),
        scale_factor=(1., 1.), flip=False, flip_direction=None)
    if scope == 'mmseg':
        regions = rng.integers(0, classes, size=(
            -(-height // LABEL_REGION), -(-width // LABEL_REGION)))
        label_map = regions.repeat(LABEL_REGION, 0).repeat(LABEL_REGION, 1)
        results.update(gt_seg_map=label_map[:height, :width].astype(np.uint8),
                       seg_map_path=f'synthetic_{index}.png',
                       reduce_zero_label=loading.get('reduce_zero_label',
                                                     False))
    elif scope == 'mmdet':
        from mmdet.structures.bbox import HorizontalBoxes
        boxes = ellipses(rng, height, width, NUM_INSTANCES)
        results.update(
            gt_bboxes=HorizontalBoxes(boxes),
            gt_bboxes_labels=rng.integers(0, classes, NUM_INSTANCES),
            gt_masks=ellipse_masks(boxes, height, width,
                                   polygons=not loading.get('poly2mask',
                                                            True)),
            gt_ignore_flags=np.zeros(NUM_INSTANCES, dtype=bool))
    else:
        results.update(gt_label=int(rng.integers(0, classes)))
    return pack(results)


def synthetic_batch(samples):
    """What mmengine's ``pseudo_collate`` makes of packed samples."""
    return dict(inputs=[s['inputs'] for s in samples],
                data_samples=[s['data_samples'] for s in samples])


def describe_sample(data_sample):
    """The ground-truth fields of a data sample and their types."""
    fields = {}
    for name in ('gt_sem_seg', 'gt_instances', 'gt_label'):
        if name not in data_sample:
            continue
        value = data_sample.get(name)
        if name == 'gt_instances':
            fields[name] = {key: type(value.get(key)).__name__
                            for key in sorted(value.keys())}
        else:
            fields[name] = type(value).__name__
    return type(data_sample).__name__, fields


def drop_absent_pretrained(cfg):
    """Drop a backbone ``Pretrained`` init whose checkpoint file is absent;
    returns a note of what the weights are."""
    init_cfg = cfg.model.get('backbone', {}).get('init_cfg')
    if not init_cfg or init_cfg.get('type') != 'Pretrained':
        return 'init_weights() of the config'
    checkpoint = init_cfg.get('checkpoint')
    if '://' in str(checkpoint) or osp.isfile(str(checkpoint)):
        return f'init_weights() of the config, backbone from {checkpoint}'
    cfg.model.backbone.init_cfg = None
    return (f'init_weights() of the config; backbone random: its Pretrained '
            f'checkpoint {checkpoint} is absent')


def build(cfg, scope, device):
    """The config's model (training mode, on ``device``) and optimizer
    wrapper, as the Runner builds them in a single process."""
    from mmengine.logging import MMLogger
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope
    # the weight-init report of every parameter is not this tool's story
    MMLogger.get_instance('benchmark_train_step', log_level='WARNING')
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model = revert_sync_batchnorm(model).to(device)
    model.train()
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


class ParameterChange:
    """L2 norm of what each optimizer step changes in the trained
    parameters: a copy is taken in a pre-hook of ``optimizer.step`` (the
    activations are freed by then) and compared in a post-hook; the
    seconds spent in the hooks are kept apart."""

    def __init__(self, optimizer):
        self.params = [p for group in optimizer.param_groups
                       for p in group['params'] if p.requires_grad]
        self.norms, self.seconds, self._before = [], 0., None
        optimizer.register_step_pre_hook(self._copy)
        optimizer.register_step_post_hook(self._compare)

    def _copy(self, optimizer, args, kwargs):
        start = time.perf_counter()
        self._before = [p.detach().clone() for p in self.params]
        self.seconds += time.perf_counter() - start

    def _compare(self, optimizer, args, kwargs):
        start = time.perf_counter()
        squares = sum(float((p.detach() - q).double().pow(2).sum())
                      for p, q in zip(self.params, self._before))
        self.norms.append(math.sqrt(squares))
        self._before = None
        self.seconds += time.perf_counter() - start


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def peak_rss_gib():
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_steps(model, optim_wrapper, batch, args):
    """Warm-up and timed ``train_step`` calls: a dict per step with its
    seconds, loss and parameter change."""
    change = ParameterChange(optim_wrapper.optimizer)
    steps = []
    for index in range(args.warmup + args.repeats):
        data = copy.deepcopy(batch)  # the preprocessor may pad it in place
        hook_seconds = change.seconds
        sync(args.device)
        start = time.perf_counter()
        log_vars = model.train_step(data, optim_wrapper)
        sync(args.device)
        seconds = time.perf_counter() - start
        loss = log_vars['loss']
        step = dict(
            timed=index >= args.warmup,
            seconds=seconds - (change.seconds - hook_seconds),
            loss=float(loss.detach() if torch.is_tensor(loss) else loss),
            param_change_l2=change.norms[-1] if len(change.norms) > index
            else None)
        steps.append(step)
        change_l2 = step['param_change_l2']
        print(f"{'step' if step['timed'] else 'warm-up'} "
              f"{index + 1 - (args.warmup if step['timed'] else 0)}: "
              f"{step['seconds']:.2f} s, loss {step['loss']:.4f}, "
              'parameter change (L2) '
              + ('none: no optimizer step' if change_l2 is None
                 else f'{change_l2:.4g}'), flush=True)
    return steps


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device):
    if device == 'cuda':
        name = torch.cuda.get_device_name()
    else:
        name = f'{cpu_name()}, {os.cpu_count()} cores'
    from mmvim.ops import select_scan_impl
    return dict(device=device, device_name=name,
                threads=torch.get_num_threads(), torch=torch.__version__,
                scan_impl=select_scan_impl(device))


def print_table(result):
    steps = [s for s in result['steps'] if s['timed']]
    rows = [
        ('config', result['config']),
        ('model', f"{result['model']}, {result['params_m']:.2f} M "
         f"parameters ({result['trained_params_m']:.2f} M trained)"),
        ('batch', f"{result['batch']} x {result['data_sample']} "
         f"{result['gt_fields']}"),
        ('input', f"{'x'.join(map(str, result['input_shape']))} uint8 "
         f"({result['input_size_from']}); to the backbone "
         f"{'x'.join(map(str, result['batch_inputs_shape']))}"),
        ('weights', result['init']),
        ('device', f"{result['device_name']}, {result['threads']} threads, "
         f"scan {result['scan_impl']}, torch {result['torch']}"),
        ('load average', ' '.join(map(str, result['load_average_at_start']))
         + ' at the start, '
         + ' '.join(map(str, result['load_average_at_end'])) + ' at the end'),
        ('date', result['date']),
        ('steps s', ', '.join(f"{s['seconds']:.2f}" for s in steps)
         + f" ({result['warmup']} warm-up untimed)"),
        ('median s', f"{result['median_seconds']:.2f} per step, "
         f"{result['images_per_second']:.3f} images / s (fastest step "
         f"{result['fastest_seconds']:.2f} s)"),
        ('peak RSS', f"{result['peak_rss_gib']:.2f} GiB "
         f"({result['rss_after_build_gib']:.2f} GiB after the build)"),
    ]
    if result.get('cuda_peak_allocated_gib') is not None:
        rows.append(('peak CUDA', f"{result['cuda_peak_allocated_gib']:.2f} "
                     'GiB allocated'))
    width = max(len(name) for name, _ in rows) + 2
    print()
    for name, value in rows:
        print(f'{name:<{width}}{value}')


def main(argv=None):
    args = parse_args(argv)
    quiet_known_warnings()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join(['python', sys.argv[0],
                          *(sys.argv[1:] if argv is None else argv)])
    date = datetime.datetime.now().isoformat(timespec='seconds')
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with exit_on_user_error():
        cfg = load_config(args.config, args.cfg_options)
    scope = config_scope(cfg, args.config)
    init = drop_absent_pretrained(cfg)
    model, optim_wrapper = build(cfg, scope, args.device)
    if args.shape:
        size, size_from = tuple(args.shape), '--shape'
    else:
        size, size_from = train_input_size(cfg, scope, model)
    batch_size = args.batch or cfg.train_dataloader.batch_size
    pack = pack_step(cfg)
    classes = num_classes(model, scope)
    loading = load_annotations(cfg)
    batch = synthetic_batch([
        synthetic_sample(i, size, scope, classes, loading, pack)
        for i in range(batch_size)])
    with torch.no_grad():
        batch_inputs = model.data_preprocessor(copy.deepcopy(batch),
                                               True)['inputs']
    data_sample, gt_fields = describe_sample(batch['data_samples'][0])
    params = list(model.parameters())
    result = dict(
        config=args.config, command=command, cfg_options=args.cfg_options,
        scope=scope, model=type(model).__name__,
        backbone=type(model.backbone).__name__,
        params_m=sum(p.numel() for p in params) / 1e6,
        trained_params_m=sum(p.numel() for p in params
                             if p.requires_grad) / 1e6,
        init=init, batch=batch_size,
        input_shape=[batch_size, *batch['inputs'][0].shape],
        input_size_from=size_from,
        batch_inputs_shape=list(batch_inputs.shape),
        data_sample=data_sample, gt_fields=gt_fields,
        num_instances=NUM_INSTANCES if scope == 'mmdet' else None,
        optim_wrapper=type(optim_wrapper).__name__,
        optimizer=type(optim_wrapper.optimizer).__name__,
        warmup=args.warmup, repeats=args.repeats,
        **device_info(args.device),
        rss_after_build_gib=peak_rss_gib(),
        date=date, load_average_at_start=load_at_start)
    del batch_inputs
    if args.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    print(f"{result['config']}: {result['model']} + {result['backbone']}, "
          f"input {result['input_shape']}, {args.warmup} warm-up + "
          f"{args.repeats} timed steps", flush=True)
    try:
        steps = run_steps(model, optim_wrapper, batch, args)
    except ValueError as error:
        if 'Expected more than 1 value per channel' not in str(error):
            raise
        raise SystemExit(
            f'error: {error}: a BatchNorm layer of this model sees a single '
            f'value per channel at --batch {batch_size} (a 1x1 pooled map); '
            'train it with --batch 2 or more') from None
    timed = [s['seconds'] for s in steps if s['timed']]
    result.update(
        steps=steps, step_seconds=timed,
        median_seconds=statistics.median(timed),
        # on a machine shared with other work: the least disturbed step
        fastest_seconds=min(timed),
        images_per_second=batch_size / statistics.median(timed),
        peak_rss_gib=peak_rss_gib(),
        cuda_peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30
        if args.device == 'cuda' else None,
        load_average_at_end=[round(x, 2) for x in os.getloadavg()])
    print_table(result)
    write_json(args.out, result)
    print(f'\nwrote {args.out}')
    return result


if __name__ == '__main__':
    main()
