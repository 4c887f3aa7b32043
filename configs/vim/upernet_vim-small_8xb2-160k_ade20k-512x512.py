# UperNet + Vim-S on ADE20K, 8 GPUs x 2 images, 160k iterations (paper:
# 44.9 mIoU): the Vim-Ti recipe with the Vim-S backbone and layer decay
# 0.95. Pass the released Vim-S file with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/vim_s_midclstok_80p5acc.pth
_base_ = ['./upernet_vim-tiny_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(checkpoint='checkpoints/vim_s_midclstok_80p5acc.pth')),
    neck=dict(embed_dim=384),
    # the reference's UPerHead width is the backbone's (hustvl/Vim,
    # seg/configs/vim/upernet/upernet_vim_small_24_512_slide_60k.py:
    # channels=384), not mmseg's 512: the paper's 46M parameters
    decode_head=dict(in_channels=[384, 384, 384, 384], channels=384),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.95))
