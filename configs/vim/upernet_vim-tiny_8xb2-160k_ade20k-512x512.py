# UperNet + Vim-Ti on ADE20K, 8 GPUs x 2 images, 160k iterations (paper:
# 41.0 mIoU). Pass the released Vim-Ti file with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/vim_t_midclstok_76p1acc.pth
_base_ = [
    '../_base_/models/upernet_vim.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/schedules/schedule_160k_adamw.py',
    '../_base_/default_runtime_mmseg.py',
]

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/vim_t_midclstok_76p1acc.pth')),
    neck=dict(embed_dim=192),
    # the reference's UPerHead width is the backbone's (hustvl/Vim,
    # seg/configs/vim/upernet/upernet_vim_tiny_24_512_slide_60k.py:
    # channels=192), not mmseg's 512: the paper's 13M parameters
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=192),
    auxiliary_head=dict(in_channels=192))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.92))
