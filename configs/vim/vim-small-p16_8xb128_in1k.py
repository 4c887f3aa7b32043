# Vim-S (stride 16) on ImageNet-1k, 8 GPUs x 128 images, 300 epochs, DeiT
# recipe. Released weights (vim_s_midclstok_80p5acc.pth): 80.5 top-1; convert
# them with tools/model_converters/vim2mmvim.py, then tools/test.py.
_base_ = ['./vim-tiny-p16_8xb128_in1k.py']
# Vim's training scripts: drop path 0.05 for S
model = dict(backbone=dict(arch='small', drop_path_rate=0.05),
             head=dict(in_channels=384))
