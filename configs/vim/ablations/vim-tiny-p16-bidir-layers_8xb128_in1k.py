# Paper Table 4 (bidirectional strategy, ImageNet-1k top-1 and ADE20K mIoU of
# Vim-Ti): like all rows of that table, without a class token; the mean of
# the tokens goes to the head. DeiT recipe of vim-tiny-p16_8xb128_in1k.py.
# Row "Bidirectional Block": unidirectional layers in pairs, the second on
# the flipped sequence, outputs and residuals summed (if_bidirectional).
_base_ = ['../vim-tiny-p16_8xb128_in1k.py']
model = dict(backbone=dict(bidirectional='layers', cls_token_position=None,
                           out_type='avg_featmap'))
