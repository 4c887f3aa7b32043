from .bimamba_mixer import BiMambaMixer
from .drop_path import DropPath
from .layer_norm_2d import LayerNorm2d
from .patch_embed import VimPatchEmbed
from .pos_embed import (CLS_TOKEN_POSITIONS, cls_token_indices,
                        infer_square_grid, insert_cls_tokens,
                        insert_middle_cls, resize_pos_embed, split_cls_tokens,
                        split_middle_cls)
from .rope import apply_reference_rope, rope_tables
from .rms_norm import RMSNorm
from .vim_block import VimBlock

__all__ = [
    'BiMambaMixer', 'DropPath', 'LayerNorm2d', 'VimPatchEmbed', 'RMSNorm', 'VimBlock',
    'resize_pos_embed', 'split_middle_cls', 'insert_middle_cls',
    'infer_square_grid', 'CLS_TOKEN_POSITIONS', 'cls_token_indices',
    'insert_cls_tokens', 'split_cls_tokens', 'apply_reference_rope',
    'rope_tables'
]
