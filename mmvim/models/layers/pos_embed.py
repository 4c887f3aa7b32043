import math

import torch
import torch.nn.functional as F


# Where the class tokens sit in the token sequence, per ``cls_token``
# option of :class:`Vim` (the reference's names in brackets): 'middle'
# (use_middle_cls_token, the released models) at J // 2; 'head' at 0;
# 'double' (use_double_cls_token) at 0 and J + 1; None: no class token.
CLS_TOKEN_POSITIONS = ('middle', 'head', 'double', None)


def cls_token_indices(num_patches, position='middle'):
    """Indices of the class tokens in a sequence of ``num_patches`` patch
    tokens with the class tokens of ``position`` inserted."""
    if position not in CLS_TOKEN_POSITIONS:
        raise ValueError(f'unknown class-token position {position!r}, '
                         f'choose from {CLS_TOKEN_POSITIONS}')
    return {'middle': [num_patches // 2], 'head': [0],
            'double': [0, num_patches + 1], None: []}[position]


def insert_cls_tokens(tokens, cls_tokens, position='middle'):
    """Patch tokens (B, J, D) + the class tokens (a list of (B, 1, D), one
    per index of :func:`cls_token_indices`) -> (B, J + len(cls_tokens), D).
    """
    if position == 'middle':
        mid = tokens.shape[1] // 2
        return torch.cat([tokens[:, :mid], cls_tokens[0], tokens[:, mid:]],
                         dim=1)
    if position == 'head':
        return torch.cat([cls_tokens[0], tokens], dim=1)
    if position == 'double':
        return torch.cat([cls_tokens[0], tokens, cls_tokens[1]], dim=1)
    return tokens


def split_cls_tokens(x, position='middle'):
    """(B, J + k, D) -> (patch tokens (B, J, D), [class tokens (B, 1, D)]):
    the inverse of :func:`insert_cls_tokens`."""
    num_cls = len(cls_token_indices(0, position))
    indices = cls_token_indices(x.shape[1] - num_cls, position)
    cls_rows = [x[:, i:i + 1] for i in indices]
    if position == 'middle':
        i = indices[0]
        return torch.cat([x[:, :i], x[:, i + 1:]], dim=1), cls_rows
    if position == 'head':
        return x[:, 1:], cls_rows
    if position == 'double':
        return x[:, 1:-1], cls_rows
    return x, cls_rows


def split_middle_cls(pos_embed):
    """(1, J + 1, D) with the class token's row at J // 2 ->
    (patch rows (1, J, D), class row (1, 1, D))."""
    patches, (cls_row, ) = split_cls_tokens(pos_embed, 'middle')
    return patches, cls_row


def insert_middle_cls(tokens, cls_token):
    """Patch tokens (B, J, D) + class token (B, 1, D) -> (B, J + 1, D) with
    the class token at position J // 2."""
    return insert_cls_tokens(tokens, [cls_token], 'middle')


def infer_square_grid(num_patches, what='pos_embed'):
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f'{what} has {num_patches} patch positions, which is not a square '
            'grid; give its grid explicitly (src_grid)')
    return side, side


def resize_pos_embed(pos_embed, src_grid, dst_grid, mode='bicubic',
                     cls_position='middle', always=False):
    """Resize a position embedding whose class-token rows sit where
    ``cls_position`` puts them (the released models: one row at ``J // 2``).

    The class rows are kept apart, the patch rows are interpolated over the
    2-D grid, and the class rows are put back where they belong in the
    destination (``J' // 2`` for the middle token).

    Args:
        pos_embed: (1, J + k, D), J = src_grid[0] * src_grid[1], k class
            rows.
        src_grid, dst_grid: (rows, cols) of the patch grids.
        mode: interpolation mode of ``F.interpolate``.
        cls_position: 'middle', 'head', 'double' or None.
        always: interpolate also when the grids are equal (an identity),
            for a graph traced with symbolic grid sizes, which cannot be
            compared with the source grid.
    Returns:
        (1, J' + k, D), J' = dst_grid[0] * dst_grid[1].
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    num_src = src_grid[0] * src_grid[1]
    num_cls = len(cls_token_indices(0, cls_position))
    if pos_embed.shape[1] != num_src + num_cls:
        raise ValueError(
            f'pos_embed has {pos_embed.shape[1]} rows, expected '
            f'{num_src + num_cls} for a {src_grid[0]}x{src_grid[1]} grid '
            f'plus {num_cls} class token row(s)')
    if not always and src_grid == dst_grid:
        return pos_embed
    patches, cls_rows = split_cls_tokens(pos_embed, cls_position)
    dim = patches.shape[-1]
    grid = patches.reshape(1, src_grid[0], src_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=dst_grid, mode=mode,
                         align_corners=False).to(pos_embed.dtype)
    patches = grid.flatten(2).transpose(1, 2)
    return insert_cls_tokens(patches, cls_rows, cls_position)
