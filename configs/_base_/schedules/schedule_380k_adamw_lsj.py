# Detection schedule of the paper (docs/vim.md, Recipes): AdamW lr 1e-4, wd 0.1
# (none on pos_embed / cls_token / D / norms / biases: the reference rule,
# A_log decayed; no_decay_rule='mamba' exempts A_log too) for a total
# batch of 64, layer-wise lr decay, 250 warm-up iterations, then linear
# decay over 380k iterations.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='VimLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(layer_decay_rate=0.837))
max_iters = 380000
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=250),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.0, by_epoch=False,
         begin=250, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# lr is for a total batch of 64; --cfg-options auto_scale_lr.enable=True
# scales it linearly to yours
auto_scale_lr = dict(base_batch_size=64, enable=False)
