# Paper Table 4 (bidirectional strategy, ImageNet-1k top-1 and ADE20K mIoU of
# Vim-Ti): like all rows of that table, without a class token; the mean of
# the tokens goes to the head. DeiT recipe of vim-tiny-p16_8xb128_in1k.py.
# Row "Bidirectional Sequence": the unidirectional block, the whole token
# sequence flipped at random in training (probability 0.5, the reference's
# flip_img_sequences_ratio; the paper does not state it).
_base_ = ['../vim-tiny-p16_8xb128_in1k.py']
model = dict(backbone=dict(bidirectional='none', sequence_flip_prob=0.5,
                           cls_token_position=None, out_type='avg_featmap'))
