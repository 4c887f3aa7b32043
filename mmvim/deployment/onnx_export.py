"""Export of mmvim classifiers and segmentors to ONNX (standard operators).

What is exported is the whole model from the image on: the data
preprocessor's normalisation, the network, and for a segmentor the resize of
the logits to the input size. The ONNX model takes

    image: float32 (N, 3, H, W), pixel values 0-255, channels in the order
        of :func:`input_normalisation` (RGB for every mmvim config: their
        preprocessors convert the loaders' BGR)

and returns ``logits`` (N, num_classes) for an mmpretrain
``ImageClassifier`` or ``seg_logits`` (N, num_classes, H, W) for an mmseg
``EncoderDecoder`` (its whole-image inference; a config's sliding-window
test is a loop over crops around the model). Resizing and cropping as the
config's test pipeline does, softmax and argmax stay outside.

How (torch 2.11): ``torch.export.export`` traces the model, with
:func:`prepare_for_onnx_export` applied, to an ExportedProgram (symbolic
batch, and with ``dynamic`` symbolic height and width); the dynamo-based
``torch.onnx.export`` translates that program at opset 18 (:data:`OPSET`).
The TorchScript-based exporter (``dynamo=False``) is deprecated in torch
2.11, has no translation of the ``scan`` operator that
:func:`mmvim.ops.selective_scan_onnx` uses, and keeps sizes the model
computes with in Python as constants of the traced input (tried with a
loop-free chunked scan: its graph failed at another input size). The
program comes from ``torch.export.export`` called here, not inside
``torch.onnx.export``: that one narrows dynamic sizes it cannot keep to its
own suggested fixes without telling, and traces with size-oblivious rules
that the ``scan`` cannot take.
"""
import os
import os.path as osp

import torch
import torch.nn as nn

from mmvim.models.backbones.vim import Vim
from mmvim.models.layers import BiMambaMixer
from .adaptive_avg_pool import AdaptiveAvgPool2dMatMul

# the opset of torch's ONNX function library (no version conversion);
# ONNX Runtime reads it from 1.14 on
OPSET = 18
INPUT_NAME = 'image'
OUTPUT_NAMES = {'classification': 'logits', 'segmentation': 'seg_logits'}
# a dynamic height / width is a multiple of SIZE_DIVISOR of at least
# MIN_DYNAMIC_SIZE pixels: UperNet's coarsest level (stride 32 with Vim's
# stride 16) then has whole cells, at least 2x2, and every size expression
# stays one that torch.export can prove for all such inputs
SIZE_DIVISOR = 32
MIN_DYNAMIC_SIZE = 64
# ONNX metadata_props the export writes and OnnxRunner reads
META_PREFIX = 'mmvim.'


def export_task(model):
    """'classification' for an mmpretrain ImageClassifier, 'segmentation'
    for an mmseg EncoderDecoder; anything else is a ValueError."""
    from mmpretrain.models import ImageClassifier
    from mmseg.models import EncoderDecoder
    if isinstance(model, ImageClassifier):
        return 'classification'
    if isinstance(model, EncoderDecoder):
        return 'segmentation'
    raise ValueError(
        f'ONNX export supports mmpretrain ImageClassifier and mmseg '
        f'EncoderDecoder models; this config builds a {type(model).__name__}')


def input_normalisation(preprocessor):
    """(mean, std, channel order) of the images an OpenMMLab data
    preprocessor takes: the mean / std it normalises with (zeros / ones if
    it does not) and 'RGB' if it reverses the loaders' BGR channels (mmseg's
    ``bgr_to_rgb``, mmpretrain's ``to_rgb``), else 'BGR'."""
    flags = ('channel_conversion', 'to_rgb', '_channel_conversion')
    if not any(hasattr(preprocessor, flag) for flag in flags):
        raise ValueError(f'unknown data preprocessor '
                         f'{type(preprocessor).__name__}: no channel order '
                         f'flag ({", ".join(flags)})')
    if getattr(preprocessor, '_enable_normalize', False):
        mean = preprocessor.mean.flatten().tolist()
        std = preprocessor.std.flatten().tolist()
    else:
        mean, std = [0.] * 3, [1.] * 3
    flips = any(getattr(preprocessor, flag, False) for flag in flags)
    return mean, std, 'RGB' if flips else 'BGR'


class OnnxExportWrapper(nn.Module):
    """The model as exported: image (N, 3, H, W) 0-255 -> logits.

    Normalises with the model's data preprocessor (its mean and std, the
    channel order already that of the input, see
    :func:`input_normalisation`), then runs the classifier
    (``mode='tensor'``: the head's logits) or the segmentor's
    ``encode_decode`` (logits resized to the input size).

    Args:
        model: an mmpretrain ImageClassifier or mmseg EncoderDecoder.
    """

    def __init__(self, model):
        super().__init__()
        self.task = export_task(model)
        mean, std, self.channel_order = input_normalisation(
            model.data_preprocessor)
        self.model = model
        self.register_buffer('mean', torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(std).view(1, 3, 1, 1))

    @property
    def output_name(self):
        return OUTPUT_NAMES[self.task]

    def forward(self, image):
        x = (image - self.mean) / self.std
        if self.task == 'classification':
            return self.model(x, mode='tensor')
        return self.model.encode_decode(x, [dict(img_shape=x.shape[2:])])


def prepare_for_onnx_export(model, dynamic=False):
    """Switch ``model`` (in place) to the formulations an ONNX export needs:
    every :class:`BiMambaMixer` scans with :func:`selective_scan_onnx`
    (``onnx_scan``), every ``nn.AdaptiveAvgPool2d`` becomes an
    :class:`AdaptiveAvgPool2dMatMul`, and with ``dynamic`` every
    :class:`Vim` resizes its position embedding for every input
    (``always_resize_pos_embed``). Only this model changes; the eager
    results stay the same within float32 rounding. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, BiMambaMixer):
            module.onnx_scan = True
        if isinstance(module, Vim):
            if dynamic and module.rope:
                raise ValueError(
                    'a Vim with rope=True exports only for one input size: '
                    'drop --dynamic')
            module.always_resize_pos_embed = dynamic
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name,
                        AdaptiveAvgPool2dMatMul(child.output_size))
    return model


def check_export_shape(shape, dynamic):
    """Raise a ValueError naming the fix if ``shape`` (H, W) cannot be the
    traced size of a (``dynamic``) export."""
    height, width = shape
    if min(height, width) < 16:
        raise ValueError(f'--shape {height} {width} is smaller than one '
                         '16x16 patch')
    if dynamic and (height % SIZE_DIVISOR or width % SIZE_DIVISOR
                    or min(height, width) < MIN_DYNAMIC_SIZE):
        raise ValueError(
            f'--dynamic traces the model at --shape, which must be '
            f'multiples of {SIZE_DIVISOR} of at least {MIN_DYNAMIC_SIZE}; '
            f'got {height} {width}')


def export_onnx(wrapper, out, shape, dynamic=False):
    """Export an :class:`OnnxExportWrapper` (prepared with
    :func:`prepare_for_onnx_export`) to the ONNX file ``out``, traced at
    ``shape`` (H, W). Batch is always dynamic; with ``dynamic`` so are
    height and width (multiples of :data:`SIZE_DIVISOR`, at least
    :data:`MIN_DYNAMIC_SIZE`). Weights are stored inside the file. Returns
    the metadata written into the file's ``metadata_props``."""
    check_export_shape(shape, dynamic)
    height, width = shape
    # batch 2: torch.export specialises a dimension traced at size 1
    example = torch.rand(2, 3, height, width) * 255
    dims = {0: torch.export.Dim('batch')}
    if dynamic:
        lowest = MIN_DYNAMIC_SIZE // SIZE_DIVISOR
        dims[2] = SIZE_DIVISOR * torch.export.Dim('height_cells', min=lowest)
        dims[3] = SIZE_DIVISOR * torch.export.Dim('width_cells', min=lowest)
    wrapper.eval()
    with torch.no_grad():
        program = torch.export.export(wrapper, (example, ),
                                      dynamic_shapes=(dims, ), strict=False)
        onnx_program = torch.onnx.export(
            program, (example, ), dynamo=True, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[wrapper.output_name],
            external_data=False, verbose=False)
    mean, std = wrapper.mean.flatten().tolist(), wrapper.std.flatten().tolist()
    metadata = {
        'task': wrapper.task,
        'input': (f'float32 (N, 3, H, W), {wrapper.channel_order}, pixel '
                  'values 0-255'),
        'channel_order': wrapper.channel_order,
        'mean': ' '.join(f'{v:g}' for v in mean),
        'std': ' '.join(f'{v:g}' for v in std),
        'exported_shape': f'{height}x{width}',
        'dynamic': str(bool(dynamic)).lower(),
        'size_divisor': str(SIZE_DIVISOR if dynamic else 1),
        'min_size': str(MIN_DYNAMIC_SIZE if dynamic else 16),
    }
    onnx_program.model.metadata_props.update(
        {META_PREFIX + k: v for k, v in metadata.items()})
    if osp.dirname(out):
        os.makedirs(osp.dirname(out), exist_ok=True)
    onnx_program.save(out, external_data=False)
    return metadata


def non_standard_ops(onnx_model):
    """Sorted 'domain::op' names of the nodes of ``onnx_model`` (an
    onnx.ModelProto), subgraphs (Scan / If / Loop bodies) included, that are
    not in the default ONNX domain ('' or 'ai.onnx'); [] for a model that
    any ONNX runtime can run."""
    found = set()

    def visit(graph):
        for node in graph.node:
            if node.domain not in ('', 'ai.onnx'):
                found.add(f'{node.domain}::{node.op_type}')
            for attribute in node.attribute:
                if attribute.HasField('g'):
                    visit(attribute.g)
                for subgraph in attribute.graphs:
                    visit(subgraph)

    visit(onnx_model.graph)
    return sorted(found)
