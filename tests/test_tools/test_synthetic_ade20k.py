"""The synthetic ADE20K set is read by mmseg's real ADE20KDataset."""
import os.path as osp
import subprocess
import sys

import numpy as np
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_ade20k_layout_and_loader(tmp_path):
    root = str(tmp_path / 'ade')
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'dataset_converters',
                                    'make_synthetic_ade20k.py'), root,
           '--num-train', '3', '--num-val', '2', '--img-size', '96']
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert 'ready' in again.stdout  # a complete dataset is reused

    import mmseg.datasets  # noqa: F401  (registers ADE20KDataset)
    from mmseg.registry import DATASETS
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = DATASETS.build(dict(
            type='ADE20KDataset', data_root=root,
            data_prefix=dict(img_path='images/validation',
                             seg_map_path='annotations/validation'),
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='LoadAnnotations', reduce_zero_label=True),
                      dict(type='PackSegInputs')]))
        assert len(dataset) == 2
        sample = dataset[0]
    seg = sample['data_samples'].gt_sem_seg.data.numpy()
    assert sample['inputs'].shape == (3, 96, 96) and seg.shape == (1, 96, 96)
    values = set(np.unique(seg).tolist())
    # wall (1) and floor (4) become 0 and 3, object borders (0) are ignored
    assert {0, 3, 255} <= values and values <= {0, 3, 12, 15, 17, 19, 20, 36,
                                                255}
    assert len(values - {0, 3, 255}) >= 1  # at least one object class
