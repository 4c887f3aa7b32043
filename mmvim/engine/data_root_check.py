"""Fail early, and helpfully, when a config's dataset folders, or the
checkpoint its ``load_from`` starts from, do not exist."""
import os.path as osp

# dataset type -> how to get the real data, or the embedded demo data
PREPARE = {
    'ADE20KDataset':
    'download ADEChallengeData2016.zip from the ADE20K / MIT scene parsing '
    'benchmark site and unzip it so that DATA_ROOT/images/{training,'
    'validation} and DATA_ROOT/annotations/{training,validation} exist '
    '(mmseg docs: dataset_prepare.md), then pass --cfg-options '
    'train_dataloader.dataset.data_root=DATA_ROOT (and val/test); or write '
    'the small synthetic set with tools/dataset_converters/'
    'make_synthetic_ade20k.py DATA_ROOT',
    'ImageNet':
    'put ImageNet-1k under DATA_ROOT/{train,val} with DATA_ROOT/meta/'
    '{train,val}.txt as mmpretrain expects (mmpretrain docs: ImageNet), '
    'or write the small synthetic set with tools/dataset_converters/'
    'make_synthetic_imagenet.py DATA_ROOT',
    'CocoDataset':
    'put COCO 2017 under DATA_ROOT with annotations/instances_{train,val}'
    '2017.json, train2017/ and val2017/ (mmdet docs: dataset_prepare.md)',
}


def _datasets(cfg):
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader_cfg = cfg.get(loader)
        if loader_cfg and loader_cfg.get('dataset'):
            yield loader, loader_cfg['dataset']


def check_data_roots(cfg, loaders=('train_dataloader', 'val_dataloader',
                                   'test_dataloader')):
    """Raise FileNotFoundError naming the missing data root and how to
    prepare that dataset, for the dataloaders the run will build."""
    for loader, dataset in _datasets(cfg):
        if loader not in loaders:
            continue
        root = dataset.get('data_root')
        if root and not osp.isdir(root):
            dataset_type = dataset.get('type', 'the dataset')
            how = PREPARE.get(dataset_type, 'prepare the dataset there or '
                              'point data_root at it with --cfg-options')
            raise FileNotFoundError(
                f'{loader}.dataset.data_root={root!r} does not exist '
                f'({dataset_type}). To fix: {how}.')


def check_load_from(cfg):
    """Fail before building the runner when ``load_from`` (the weights a
    fine-tuning config starts from) names a missing file. With ``resume``
    the file is the checkpoint to resume, checked by the resume code."""
    load_from = cfg.get('load_from')
    if not load_from or cfg.get('resume') or '://' in str(load_from):
        return
    if not osp.isfile(load_from):
        raise FileNotFoundError(
            f'load_from={load_from!r} does not exist. To fix: convert the '
            'released Vim file this config starts from with tools/'
            'model_converters/vim2mmvim.py RELEASED.pth '
            f'{load_from} (see the comment at the top of the config), or '
            'pass --cfg-options load_from=PATH')
