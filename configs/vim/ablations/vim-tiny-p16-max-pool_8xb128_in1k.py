# Paper Table 5 (classification design, ImageNet-1k top-1 of Vim-Ti), DeiT
# recipe of vim-tiny-p16_8xb128_in1k.py, which is the row "Middle class
# token" (the released models).
# Row "Max pool": no class token; the linear head on every token, then the
# maximum over the tokens (the reference's final_pool_type='max').
_base_ = ['../vim-tiny-p16_8xb128_in1k.py']
custom_imports = dict(imports=['mmvim', 'mmvim.models.heads'],
                      allow_failed_imports=False)
model = dict(
    backbone=dict(cls_token_position=None, out_type='raw'),
    head=dict(type='TokenMaxClsHead'))
