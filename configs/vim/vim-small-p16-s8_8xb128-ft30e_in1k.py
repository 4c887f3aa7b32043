# Long-sequence fine-tuning of Vim-S: patch 16 with stride 8, 30 epochs at a
# constant lr 1e-5, wd 1e-8 (docs/vim.md, Recipes). Released result
# (vim_s_midclstok_ft_81p6acc.pth): 81.6 top-1. Starts from the converted
# stride-16 Vim-S classifier (tools/model_converters/vim2mmvim.py), position
# embedding resized 14x14 -> 27x27 on load.
_base_ = ['./vim-tiny-p16-s8_8xb128-ft30e_in1k.py']
model = dict(backbone=dict(arch='small', drop_path_rate=0.05),
             head=dict(in_channels=384))
load_from = 'checkpoints/vim-small-p16_in1k.pth'
