# Paper Table 4, ADE20K column, row "ssm": a backward SSM sharing the forward conv and projections.
# Segmenter's two-layer mask transformer on the last Vim-Ti map, no class
# token (as all rows of Table 4), the paper's ADE20K recipe (AdamW lr 6e-5,
# wd 0.01, 160k iterations, layer decay 0.92). The backbone starts from the
# matching ImageNet ablation, vim-tiny-p16-bidir-ssm_8xb128_in1k.py:
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/that/checkpoint.pth
_base_ = [
    '../../_base_/models/segmenter_vim.py',
    '../../_base_/datasets/ade20k_512x512.py',
    '../../_base_/schedules/schedule_160k_adamw.py',
    '../../_base_/default_runtime_mmseg.py',
]

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        bidirectional='ssm',
        cls_token_position=None,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/vim-tiny-p16-bidir-ssm_in1k.pth')))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.92))
