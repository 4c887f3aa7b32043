# Paper Table 5 (classification design, ImageNet-1k top-1 of Vim-Ti), DeiT
# recipe of vim-tiny-p16_8xb128_in1k.py, which is the row "Middle class
# token" (the released models).
# Row "Head class token": one class token before the patches (index 0).
_base_ = ['../vim-tiny-p16_8xb128_in1k.py']
model = dict(backbone=dict(cls_token_position='head'))
