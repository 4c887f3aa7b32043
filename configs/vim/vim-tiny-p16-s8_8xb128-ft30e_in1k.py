# Long-sequence fine-tuning of Vim-Ti: patch 16 with stride 8 (27x27 = 729
# tokens at 224), 30 epochs at a constant lr 1e-5, wd 1e-8 (docs/vim.md, Recipes).
# Released result (vim_t_midclstok_ft_78p3acc.pth): 78.3 top-1.
# Starts from the stride-16 classifier; its 14x14 position embedding is
# resized to 27x27 when it is loaded. Convert the released stride-16 file:
#   python tools/model_converters/vim2mmvim.py vim_t_midclstok_76p1acc.pth \
#       checkpoints/vim-tiny-p16_in1k.pth
# (or pass another with --cfg-options load_from=PATH).
_base_ = ['./vim-tiny-p16_8xb128_in1k.py']
model = dict(backbone=dict(stride=8))
load_from = 'checkpoints/vim-tiny-p16_in1k.pth'

optim_wrapper = dict(optimizer=dict(lr=1e-5, weight_decay=1e-8))
param_scheduler = [
    dict(type='ConstantLR', factor=1.0, by_epoch=True, begin=0, end=30)
]
train_cfg = dict(max_epochs=30)
