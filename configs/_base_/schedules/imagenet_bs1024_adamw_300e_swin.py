# Swin's ImageNet-1k schedule for Hier-Vim: AdamW lr 1e-3 for a total batch
# of 1024, wd 0.05, 20 linear warm-up epochs from 1e-6, cosine to 1e-5 over
# 300 epochs, gradient clipping at 5. No weight decay where the Vim configs
# have none (mmvim.engine's is_no_weight_decay, the reference run's rule):
# every 1-D parameter (norms, biases, the SSM's D / D_b); A_log / A_b_log
# (E x N) are decayed (Hier-Vim has no position embedding or class
# token). EMA as VMamba's protocol (decay
# 0.9999 per iteration; Swin itself trained without one).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8,
                   betas=(0.9, 0.999)),
    # no decay on 1-D parameters: the Vim configs' (reference) rule
    paramwise_cfg=dict(flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=280, eta_min=1e-5, by_epoch=True,
         begin=20, end=300),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()
# lr is for 8 GPUs x 128 images; to scale it linearly to another total
# batch, pass --cfg-options auto_scale_lr.enable=True
auto_scale_lr = dict(base_batch_size=1024)
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
