# Paper Table 4, ADE20K column, row "none": Mamba's unidirectional block.
# The recipe of segmenter-mask_vim-tiny-bidir-ssm-conv_8xb2-160k_ade20k-512x512
# (Segmenter's two-layer mask transformer, no class token, the paper's ADE20K
# schedule); the backbone starts from vim-tiny-p16-bidir-none_8xb128_in1k.py:
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/that/checkpoint.pth
_base_ = ['./segmenter-mask_vim-tiny-bidir-ssm-conv_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        bidirectional='none',
        init_cfg=dict(
            checkpoint='checkpoints/vim-tiny-p16-bidir-none_in1k.pth')))
