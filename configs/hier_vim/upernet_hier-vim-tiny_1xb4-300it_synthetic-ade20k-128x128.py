# Demo: UperNet + Hier-Vim-T trained from scratch on the embedded synthetic
# ADE20K-layout set on the CPU (single process: BN, not SyncBN; a lighter
# decode head than the 512-channel recipe; the Vim demo's lr and schedule).
_base_ = [
    '../_base_/models/upernet_hier-vim.py',
    '../_base_/datasets/synthetic_ade20k_128x128.py',
    '../_base_/schedules/schedule_160k_adamw_swin.py',
    '../_base_/default_runtime_mmseg.py',
]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=(128, 128)),
    backbone=dict(arch='tiny', drop_path_rate=0.0),
    decode_head=dict(channels=128, norm_cfg=norm_cfg),
    auxiliary_head=dict(channels=64, norm_cfg=norm_cfg))
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.01),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=30),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=30,
         end=300),
]
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=300, max_keep_ckpts=2))
env_cfg = dict(cudnn_benchmark=False)
