"""Run an exported mmvim ONNX model in ONNX Runtime on the CPU."""
import os.path as osp

import numpy as np
import onnxruntime as ort

from .onnx_export import META_PREFIX


class OnnxRunner:
    """An ONNX file written by ``tools/deployment/pytorch2onnx.py`` in an
    ONNX Runtime CPU session, checking each input against what the file was
    exported for before running it.

    Args:
        path (str): the .onnx file.
        num_threads (int | None): intra-op threads (None: ONNX Runtime's
            default, all cores).

    Attributes:
        metadata (dict): what the export recorded (task, channel order,
            mean / std, exported shape, whether height / width are dynamic).
    """

    def __init__(self, path, num_threads=None):
        if not osp.isfile(path):
            raise FileNotFoundError(f'ONNX model {path} not found')
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        self.path = path
        self.session = ort.InferenceSession(
            path, options, providers=['CPUExecutionProvider'])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[len(META_PREFIX):]: v for k, v in meta.items()
                         if k.startswith(META_PREFIX)}
        if 'task' not in self.metadata:
            raise ValueError(f'{path} has no mmvim export metadata; export '
                             'it with tools/deployment/pytorch2onnx.py')
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def dynamic(self):
        return self.metadata['dynamic'] == 'true'

    def check_input(self, image):
        """Raise a ValueError saying what to do if ``image`` is not what the
        model was exported for."""
        if not isinstance(image, np.ndarray) or image.dtype != np.float32:
            got = getattr(image, 'dtype', type(image).__name__)
            raise ValueError(f'{self.input_name} must be a float32 numpy '
                             f'array, got {got}')
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f'{self.input_name} must be (N, 3, H, W), got '
                             f'{tuple(image.shape)}')
        height, width = image.shape[2:]
        if not self.dynamic:
            exported = self.metadata['exported_shape']
            if f'{height}x{width}' != exported:
                raise ValueError(
                    f'{self.path} was exported for {exported} inputs, got '
                    f'{height}x{width}; re-export with --dynamic or --shape '
                    f'{height} {width}')
            return
        divisor = int(self.metadata['size_divisor'])
        lowest = int(self.metadata['min_size'])
        if height % divisor or width % divisor or min(height,
                                                      width) < lowest:
            raise ValueError(
                f'{self.path} (exported with --dynamic) takes heights and '
                f'widths that are multiples of {divisor} of at least '
                f'{lowest}, got {height}x{width}; resize or pad the image')

    def __call__(self, image):
        """image: float32 (N, 3, H, W), 0-255, in the exported channel
        order -> the model's output (logits or seg_logits) as numpy."""
        self.check_input(image)
        return self.session.run([self.output_name],
                                {self.input_name: image})[0]
