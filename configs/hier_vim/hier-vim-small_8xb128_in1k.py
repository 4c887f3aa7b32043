# Hier-Vim-Small on ImageNet-1k, 8 GPUs x 128 images, 300 epochs, Swin's
# recipe (paper, appendix C: 83.4 top-1, Swin-S 83.2).
_base_ = [
    '../_base_/models/hier-vim_in1k.py',
    '../_base_/datasets/imagenet_bs128_randaug_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_300e_swin.py',
    '../_base_/default_runtime_mmpretrain.py',
]
# Swin's drop path for this size
model = dict(backbone=dict(arch='small', drop_path_rate=0.3),
             head=dict(in_channels=768))
