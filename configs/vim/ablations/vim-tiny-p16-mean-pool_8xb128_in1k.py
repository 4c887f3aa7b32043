# Paper Table 5 (classification design, ImageNet-1k top-1 of Vim-Ti), DeiT
# recipe of vim-tiny-p16_8xb128_in1k.py, which is the row "Middle class
# token" (the released models).
# Row "Mean pool": no class token; the mean of the tokens goes to the head.
_base_ = ['../vim-tiny-p16_8xb128_in1k.py']
model = dict(backbone=dict(cls_token_position=None, out_type='avg_featmap'))
