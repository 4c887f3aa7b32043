from .hier_vim import HierVim
from .vim import Vim
from .vim_checkpoint import (VimCheckpointError, checkpoint_state_dict,
                             convert_official_to_mmpretrain, is_official_vim,
                             vim_backbone_weights)

__all__ = [
    'HierVim', 'Vim', 'VimCheckpointError', 'checkpoint_state_dict', 'convert_official_to_mmpretrain',
    'is_official_vim', 'vim_backbone_weights'
]
