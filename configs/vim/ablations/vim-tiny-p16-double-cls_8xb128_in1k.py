# Paper Table 5 (classification design, ImageNet-1k top-1 of Vim-Ti), DeiT
# recipe of vim-tiny-p16_8xb128_in1k.py, which is the row "Middle class
# token" (the released models).
# Row "Double class token": class tokens at the head and the tail of the
# sequence (cls_token_head, cls_token_tail), their mean goes to the head.
_base_ = ['../vim-tiny-p16_8xb128_in1k.py']
model = dict(backbone=dict(cls_token_position='double'))
