# Demo: Vim-Ti trained from scratch on the embedded synthetic shapes set
# (6 classes, 64x64 images, ImageNet layout) on the CPU in a few minutes.
_base_ = [
    '../_base_/datasets/synthetic_in1k_64px.py',
    '../_base_/default_runtime_mmpretrain.py',
]

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='Vim',
        arch='tiny',
        img_size=64,
        patch_size=16,
        stride=16,
        out_type='cls_token',
        drop_path_rate=0.1),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=6,
        in_channels=192,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        # the reference's head init: trunc-normal 0.02, zero bias
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02)),
)

# AdamW; rate 1.0 = no layer decay, but the Vim no-weight-decay set applies
optim_wrapper = dict(
    constructor='VimLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05,
                   betas=(0.9, 0.999)),
    paramwise_cfg=dict(layer_decay_rate=1.0),
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
