# Hier-Vim image classifier, Swin's: the last stage's normed map ->
# global average pooling -> linear head. Swin / DeiT regularisation: label
# smoothing 0.1, Mixup 0.8 / CutMix 1.0 (one of the two per batch).
# No TruncNormal init_cfg on the whole model (Swin's mmpretrain configs
# have one): HierVim initialises its own linears and keeps the mixer's
# dt_proj init, which a model-wide Linear init would overwrite.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='HierVim', arch='tiny', out_indices=(3, ),
                  drop_path_rate=0.2),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                  mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)
