# Vim image classifier: the middle class token after norm_f -> linear head.
# DeiT regularisation: label smoothing 0.1, Mixup 0.8 / CutMix 1.0 (one of
# the two per batch).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='Vim',
        arch='tiny',
        img_size=224,
        patch_size=16,
        stride=16,
        out_type='cls_token',
        final_norm=True,
        drop_path_rate=0.0),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=192,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                  mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)
