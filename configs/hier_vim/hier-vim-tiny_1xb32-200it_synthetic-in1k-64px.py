# Demo: Hier-Vim-T trained from scratch on the embedded synthetic shapes set
# (6 classes, 64x64 images, ImageNet layout) on the CPU: stages at 16x16,
# 8x8, 4x4 and 2x2 tokens, Swin's pooled linear head.
_base_ = [
    '../_base_/datasets/synthetic_in1k_64px.py',
    '../_base_/default_runtime_mmpretrain.py',
]
model = dict(
    type='ImageClassifier',
    backbone=dict(type='HierVim', arch='tiny', out_indices=(3, ),
                  drop_path_rate=0.1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=6,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0)),
)
# the ImageNet recipe's optimizer and no-decay set at a from-scratch lr
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05,
                   betas=(0.9, 0.999)),
    # no decay on 1-D parameters: the Vim configs' (reference) rule
    paramwise_cfg=dict(flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=200,
         eta_min=1e-5),
]
train_cfg = dict(by_epoch=False, max_iters=200, val_interval=200)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200,
                    max_keep_ckpts=2),
)
