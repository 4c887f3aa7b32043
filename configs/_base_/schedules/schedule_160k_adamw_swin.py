# Swin's UperNet schedule for Hier-Vim: 160k iterations of AdamW (lr 6e-5,
# wd 0.01), 1500 linear warm-up iterations, then linear decay to zero; no
# weight decay on 1-D parameters (norms, biases, D / D_b), as the Vim
# configs (Swin's own rule exempts norms and its position tables, which
# Hier-Vim does not have).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999),
                   weight_decay=0.01),
    # no decay on 1-D parameters: the Vim configs' (reference) rule
    paramwise_cfg=dict(flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500,
         end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000,
                 val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000,
                    max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    # checkpoints carry the RNG states: a resumed run repeats an
    # uninterrupted one
    rng_state=dict(type='RNGStateHook'))
