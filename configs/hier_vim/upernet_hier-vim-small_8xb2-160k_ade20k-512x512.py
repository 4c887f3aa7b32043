# UperNet + Hier-Vim-S on ADE20K, 8 GPUs x 2 images, 160k iterations,
# Swin's UperNet recipe (drop path 0.3). Start from a Hier-Vim-S classifier
# trained with configs/hier_vim/hier-vim-small_8xb128_in1k.py:
#   --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/.../epoch_300.pth
_base_ = [
    '../_base_/models/upernet_hier-vim.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/schedules/schedule_160k_adamw_swin.py',
    '../_base_/default_runtime_mmseg.py',
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/hier-vim-small_in1k.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
