# Segmenter's mask transformer (two layers) on the last stride-16 map of a
# plain Vim (mmseg's SegmenterMaskTransformerHead): the simple head the
# paper used for the ADE20K column of its bidirectional-strategy ablation
# (Table 4).
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='Vim',
        arch='tiny',
        img_size=512,
        patch_size=16,
        stride=16,
        out_indices=-1,
        out_type='featmap',
        final_norm=True,
        drop_path_rate=0.1),
    decode_head=dict(
        type='SegmenterMaskTransformerHead',
        in_channels=192,
        channels=192,
        num_classes=150,
        num_layers=2,
        num_heads=3,
        embed_dims=192,
        dropout_ratio=0.0,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
