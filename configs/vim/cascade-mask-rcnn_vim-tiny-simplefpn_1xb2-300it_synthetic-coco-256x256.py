# Demo: Cascade Mask R-CNN + Vim-Ti trained from scratch on the embedded
# synthetic COCO-layout set on the CPU in minutes; reports bbox and segm mAP
# with mmdet's CocoMetric. The COCO model's structure (SimpleFPN, 2-conv RPN,
# 3 cascade stages of 4conv1fc LN box heads, LN mask head) at a quarter
# of the channel widths and 64 RoI samples per image instead of 512 (the
# synthetic images hold a few objects each), so that a CPU trains it in
# minutes.
_base_ = [
    '../_base_/models/cascade-mask-rcnn_vim_simplefpn.py',
    '../_base_/datasets/synthetic_coco_256x256.py',
    '../_base_/default_runtime_mmdet.py',
]
image_size = (256, 256)
num_classes = 4
norm_cfg = dict(type='LN2d', requires_grad=True)
channels = 64
# mmengine replaces lists instead of merging them: the three cascade stages
# are restated
_stage_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
               [0.033, 0.033, 0.067, 0.067]]
_stage_ious = [0.5, 0.6, 0.7]
model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)
    ]),
    backbone=dict(arch='tiny', img_size=image_size, drop_path_rate=0.1),
    neck=dict(in_channels=192, out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        mask_roi_extractor=dict(out_channels=channels),
        bbox_head=[
            dict(
                type='Shared4Conv1FCBBoxHead',
                in_channels=channels,
                conv_out_channels=channels,
                fc_out_channels=256,
                roi_feat_size=7,
                num_classes=num_classes,
                norm_cfg=norm_cfg,
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[0.0, 0.0, 0.0, 0.0],
                    target_stds=stds),
                reg_class_agnostic=True,
                loss_cls=dict(
                    type='CrossEntropyLoss', use_sigmoid=False,
                    loss_weight=1.0),
                loss_bbox=dict(type='SmoothL1Loss', beta=1.0,
                               loss_weight=1.0)) for stds in _stage_stds
        ],
        mask_head=dict(in_channels=channels, conv_out_channels=channels,
                       num_classes=num_classes)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=200),
        rcnn=[
            dict(
                assigner=dict(
                    type='MaxIoUAssigner',
                    pos_iou_thr=iou,
                    neg_iou_thr=iou,
                    min_pos_iou=iou,
                    match_low_quality=False,
                    ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler',
                    num=64,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                mask_size=28,
                pos_weight=-1,
                debug=False) for iou in _stage_ious
        ]),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200)))

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='VimLayerDecayOptimWrapperConstructor',
    # from scratch in 300 iterations: the classification demo's lr, not the
    # COCO recipe's 1e-4 for a pretrained backbone over 380k iterations
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999),
                   weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=1.0),
    clip_grad=dict(max_norm=5.0))
max_iters = 300
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=30),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.05, by_epoch=False,
         begin=30, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval=max_iters, max_keep_ckpts=2))
