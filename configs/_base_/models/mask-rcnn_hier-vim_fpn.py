# Mask R-CNN + FPN on the four stages of Hier-Vim: mmdet's own Mask R-CNN
# (R-50-FPN heads, anchors, training and test settings) with the ResNet
# replaced, as mmdet's Swin configs do.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='HierVim',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 768]))
