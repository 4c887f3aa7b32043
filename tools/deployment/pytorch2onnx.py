"""Export an mmvim classifier or segmentor to ONNX (standard operators only).

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --out model.onnx
        [--shape H W] [--dynamic] [--cfg-options key=value ...]

CONFIG builds an mmpretrain ``ImageClassifier`` (e.g.
configs/vim/vim-tiny-p16_8xb128_in1k.py) or an mmseg ``EncoderDecoder``
(e.g. configs/vim/upernet_vim-tiny_8xb2-160k_ade20k-512x512.py); CHECKPOINT
holds its weights. The whole model is exported, from the image on:

- input ``image``: float32 (N, 3, H, W), pixel values 0-255, channels in RGB
  order (the order after the config's data preprocessor's BGR-to-RGB
  conversion; printed, and stored in the file's metadata), already resized /
  cropped as the config's test pipeline does (e.g. resize 256, center crop
  224 for ImageNet). The graph subtracts the preprocessor's mean and divides
  by its std itself (ImageNet's 123.675 116.28 103.53 / 58.395 57.12 57.375
  in every mmvim config).
- output ``logits`` (N, num_classes) for a classifier (apply softmax for
  scores), ``seg_logits`` (N, num_classes, H, W) for a segmentor: its
  whole-image inference, logits resized to the input size (argmax over dim
  1 is the label map; a config's sliding-window test runs the model on
  each crop).

The batch size is free. Height and width are fixed to --shape (default: the
backbone's ``img_size``) unless --dynamic is given; then any height and
width that are multiples of 32 of at least 64 pixels work (the export is
traced at --shape). ``mmvim.deployment.OnnxRunner`` runs the file in ONNX
Runtime and says what to do with an input of another size.

The selective scan becomes one standard ONNX ``Scan`` per direction
(``mmvim.ops.selective_scan_onnx``); the exporter is torch's dynamo-based
``torch.onnx.export`` at opset 18 (``mmvim/deployment/onnx_export.py`` says
why). After the export the tool checks the file with
``onnx.checker.check_model``, that every operator is in the default ONNX
domain, and that ONNX Runtime gives what PyTorch gives on a random image
(relative L2 of the outputs, printed). Exporting Vim-Ti takes minutes on a
small CPU.
"""
import argparse
import os.path as osp
import time

import numpy as np
import onnx
import torch
from mmengine.config import DictAction

import mmvim  # noqa: F401  (registers the Vim modules, safe checkpoint loading)
from mmvim.deployment import (INPUT_NAME, OPSET, OnnxExportWrapper,
                              OnnxRunner, check_export_shape, export_onnx,
                              load_model, non_standard_ops,
                              prepare_for_onnx_export)
from mmvim.engine import exit_on_user_error, quiet_known_warnings

# largest relative L2 between ONNX Runtime's and PyTorch's outputs that
# passes the check (float32 rounding gives about 1e-6)
TOLERANCE = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export an mmvim classifier or segmentor to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument(
        '--shape', type=int, nargs=2, metavar=('H', 'W'),
        help="input height and width (default: the backbone's img_size)")
    parser.add_argument(
        '--dynamic', action='store_true',
        help='any input height and width (multiples of 32, at least 64) '
        'instead of --shape only')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, e.g. '
        'model.backbone.arch=small')
    return parser.parse_args(argv)


def default_shape(model):
    """(H, W) the backbone is made for (its ``img_size``)."""
    img_size = getattr(getattr(model, 'backbone', None), 'img_size', None)
    if img_size is None:
        raise ValueError('the backbone has no img_size; give --shape H W')
    return tuple(img_size)


def relative_l2(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def main(argv=None):
    args = parse_args(argv)
    quiet_known_warnings()
    try:
        with exit_on_user_error():
            model = load_model(args.config, args.checkpoint,
                               args.cfg_options)
        wrapper = OnnxExportWrapper(model)
        shape = tuple(args.shape) if args.shape else default_shape(model)
        check_export_shape(shape, args.dynamic)
        # what PyTorch computes (the model as mmvim runs it), for the check
        torch.manual_seed(0)
        image = torch.rand(1, 3, *shape) * 255
        with torch.no_grad():
            expected = wrapper(image).numpy()
        prepare_for_onnx_export(wrapper, args.dynamic)
    except ValueError as error:
        raise SystemExit(f'error: {error}') from None

    start = time.time()
    metadata = export_onnx(wrapper, args.out, shape, args.dynamic)
    seconds = time.time() - start

    onnx.checker.check_model(args.out, full_check=True)
    odd = non_standard_ops(onnx.load(args.out))
    if odd:
        raise SystemExit(f'error: {args.out} has operators outside the '
                         f'default ONNX domain: {", ".join(odd)}')
    error = relative_l2(OnnxRunner(args.out)(image.numpy()), expected)
    if not error <= TOLERANCE:
        raise SystemExit(f'error: {args.out}: ONNX Runtime differs from '
                         f'PyTorch by {error:.2e} (relative L2, tolerance '
                         f'{TOLERANCE:g}) on a random image')

    size = ('H x W (multiples of 32, at least 64)' if args.dynamic else
            f'{shape[0]} x {shape[1]}')
    print(f'wrote {args.out} ({wrapper.task}, '
          f'{osp.getsize(args.out) / 2**20:.1f} MiB, opset {OPSET}, '
          f'exported in {seconds:.0f} s)')
    print(f"input  '{INPUT_NAME}': float32 N x 3 x {size}, "
          f"{metadata['channel_order']}, 0-255; normalised inside with "
          f"mean {metadata['mean']}, std {metadata['std']}")
    out_size = 'num_classes' if wrapper.task == 'classification' else \
        'num_classes x H x W'
    print(f"output '{wrapper.output_name}': float32 N x {out_size}")
    print('checked: onnx.checker passes, default ONNX domain operators '
          f'only, ONNX Runtime vs PyTorch relative L2 {error:.2e} on a '
          'random image')
    return dict(metadata, relative_l2=error, seconds=seconds)


if __name__ == '__main__':
    main()
