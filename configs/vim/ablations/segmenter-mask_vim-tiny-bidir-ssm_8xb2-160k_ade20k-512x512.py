# Paper Table 4, ADE20K column, row "ssm": a backward SSM sharing the forward conv and projections.
# The recipe of segmenter-mask_vim-tiny-bidir-ssm-conv_8xb2-160k_ade20k-512x512
# (Segmenter's two-layer mask transformer, no class token, the paper's ADE20K
# schedule); the backbone starts from vim-tiny-p16-bidir-ssm_8xb128_in1k.py:
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/that/checkpoint.pth
_base_ = ['./segmenter-mask_vim-tiny-bidir-ssm-conv_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        bidirectional='ssm',
        init_cfg=dict(
            checkpoint='checkpoints/vim-tiny-p16-bidir-ssm_in1k.pth')))
