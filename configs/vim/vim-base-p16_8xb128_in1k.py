# Vim-B (stride 16) on ImageNet-1k, 8 GPUs x 128 images, 300 epochs, DeiT
# recipe. Released weights (vim_b_midclstok_81p9acc.pth): 81.9 top-1; convert
# them with tools/model_converters/vim2mmvim.py, then tools/test.py.
_base_ = ['./vim-tiny-p16_8xb128_in1k.py']
# DeiT-B's drop path
model = dict(backbone=dict(arch='base', drop_path_rate=0.1),
             head=dict(in_channels=768))
