# Mask R-CNN + FPN + Hier-Vim-T on COCO 2017, 8 GPUs x 2 images, 12 epochs,
# Swin's recipe (single-scale 1333x800, drop path 0.2). Start from a
# Hier-Vim-T classifier trained with configs/hier_vim/hier-vim-tiny_8xb128_in1k.py:
#   --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/.../epoch_300.pth
_base_ = [
    '../_base_/models/mask-rcnn_hier-vim_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x_adamw_swin.py',
    '../_base_/default_runtime_mmdet.py',
]
model = dict(
    backbone=dict(
        arch='tiny',
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/hier-vim-tiny_in1k.pth')))
# epoch-based: checkpoints and logs by epoch (the runtime's are by iteration)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=1,
                    max_keep_ckpts=3))
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
