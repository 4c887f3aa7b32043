# Swin's Mask R-CNN schedule for Hier-Vim: 12 epochs of AdamW (lr 1e-4 for a
# total batch of 16, wd 0.05), 1000 linear warm-up iterations, lr x0.1
# after epochs 8 and 11. No weight decay on 1-D parameters (norms, biases,
# D / D_b), as the Vim configs.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=0.05),
    # no decay on 1-D parameters: the Vim configs' (reference) rule
    paramwise_cfg=dict(flat_decay_mult=0.0))
max_epochs = 12
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[8, 11], gamma=0.1),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs,
                 val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)
