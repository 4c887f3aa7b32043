# Hier-Vim-Tiny on ImageNet-1k, 8 GPUs x 128 images, 300 epochs, Swin's
# recipe (paper, appendix C: 82.5 top-1, Swin-T 81.2).
_base_ = [
    '../_base_/models/hier-vim_in1k.py',
    '../_base_/datasets/imagenet_bs128_randaug_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_300e_swin.py',
    '../_base_/default_runtime_mmpretrain.py',
]
# Swin's drop path for this size
model = dict(backbone=dict(arch='tiny', drop_path_rate=0.2),
             head=dict(in_channels=768))
