from .bimamba_mixer import BiMambaMixer
from .drop_path import DropPath
from .patch_embed import VimPatchEmbed
from .pos_embed import (infer_square_grid, insert_middle_cls,
                        resize_pos_embed, split_middle_cls)
from .rms_norm import RMSNorm
from .vim_block import VimBlock

__all__ = [
    'BiMambaMixer', 'DropPath', 'VimPatchEmbed', 'RMSNorm', 'VimBlock',
    'resize_pos_embed', 'split_middle_cls', 'insert_middle_cls',
    'infer_square_grid'
]
