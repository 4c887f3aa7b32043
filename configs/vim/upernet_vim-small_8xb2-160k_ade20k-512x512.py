# UperNet + Vim-S on ADE20K, 8 GPUs x 2 images, 160k iterations (paper:
# 44.9 mIoU). Pass the released Vim-S file with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/vim_s_midclstok_80p5acc.pth
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
        arch='small',
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/vim_s_midclstok_80p5acc.pth')),
    neck=dict(embed_dim=384),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.95))
