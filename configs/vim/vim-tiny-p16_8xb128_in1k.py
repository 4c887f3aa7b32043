# Vim-Ti (stride 16) on ImageNet-1k, 8 GPUs x 128 images, 300 epochs, DeiT
# recipe. Released weights: 76.1 top-1. Evaluate them with
#   python tools/model_converters/vim2mmvim.py vim_t_midclstok_76p1acc.pth \
#       checkpoints/vim-tiny-p16_in1k.pth
#   python tools/test.py configs/vim/vim-tiny-p16_8xb128_in1k.py \
#       checkpoints/vim-tiny-p16_in1k.pth
_base_ = [
    '../_base_/models/vim_in1k.py',
    '../_base_/datasets/imagenet_bs128_randaug_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_300e.py',
    '../_base_/default_runtime_mmpretrain.py',
]
# Vim's training scripts: no drop path for Ti
model = dict(backbone=dict(arch='tiny', drop_path_rate=0.0),
             head=dict(in_channels=192))
