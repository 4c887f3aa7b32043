# DeiT schedule (docs/vim.md, Recipes): AdamW lr 1e-3 for a total batch of 1024,
# wd 0.05 except pos_embed / cls_token / D / norms / biases (the reference
# run's timm rule: A_log / A_b_log are decayed; paramwise_cfg
# no_decay_rule='mamba' gives Mamba's rule, A_log exempt),
# 5 linear warm-up epochs, cosine to 1e-5 over 300 epochs, EMA of the weights.
optim_wrapper = dict(
    # rate 1.0: no layer-wise decay when training from scratch; the
    # constructor still applies Vim's no-weight-decay set.
    constructor='VimLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8,
                   betas=(0.9, 0.999)),
    paramwise_cfg=dict(layer_decay_rate=1.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=295, eta_min=1e-5, by_epoch=True,
         begin=5, end=300),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()
# lr is for 8 GPUs x 128 images; to scale it linearly to another total
# batch, pass --cfg-options auto_scale_lr.enable=True
auto_scale_lr = dict(base_batch_size=1024)
# DeiT's model EMA decay 0.99996 per iteration
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]
