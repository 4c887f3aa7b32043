# Paper Table 4 (bidirectional strategy, ImageNet-1k top-1 and ADE20K mIoU of
# Vim-Ti): like all rows of that table, without a class token; the mean of
# the tokens goes to the head. DeiT recipe of vim-tiny-p16_8xb128_in1k.py.
# Row "Bidirectional SSM": a backward SSM with its own A sharing the forward
# conv and projections (the reference's bimamba v1).
_base_ = ['../vim-tiny-p16_8xb128_in1k.py']
model = dict(backbone=dict(bidirectional='ssm', cls_token_position=None,
                           out_type='avg_featmap'))
