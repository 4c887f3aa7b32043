# Cascade Mask R-CNN + Vim-Ti (ViTDet-style simple pyramid, global scan over
# all 4096 tokens of a 1024x1024 image, no windows) on COCO 2017, 8 GPUs x 8
# images, 380k iterations, large-scale jitter (paper: 45.7 box AP, 39.2 mask
# AP). Pass the released Vim-Ti file (its 14x14 position embedding is
# resized to 64x64 when loaded) with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/vim_t_midclstok_76p1acc.pth
# and train with mixed precision on GPUs: tools/dist_train.sh CONFIG 8 --amp
_base_ = [
    '../_base_/models/cascade-mask-rcnn_vim_simplefpn.py',
    '../_base_/datasets/coco_instance_lsj_1024x1024.py',
    '../_base_/schedules/schedule_380k_adamw_lsj.py',
    '../_base_/default_runtime_mmdet.py',
]
image_size = (1024, 1024)
model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)
    ]),
    backbone=dict(
        arch='tiny',
        img_size=image_size,
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/vim_t_midclstok_76p1acc.pth')),
    neck=dict(in_channels=192))
# layer-wise lr decay of the reference detection code for Vim-Ti
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.837))
