import math

import torch
import torch.nn.functional as F


def split_middle_cls(pos_embed):
    """(1, J + 1, D) with the class token's row at J // 2 ->
    (patch rows (1, J, D), class row (1, 1, D))."""
    num_patches = pos_embed.shape[1] - 1
    mid = num_patches // 2
    patches = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)
    return patches, pos_embed[:, mid:mid + 1]


def insert_middle_cls(tokens, cls_token):
    """Patch tokens (B, J, D) + class token (B, 1, D) -> (B, J + 1, D) with
    the class token at position J // 2."""
    mid = tokens.shape[1] // 2
    return torch.cat([tokens[:, :mid], cls_token, tokens[:, mid:]], dim=1)


def infer_square_grid(num_patches, what='pos_embed'):
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f'{what} has {num_patches} patch positions, which is not a square '
            'grid; give its grid explicitly (src_grid)')
    return side, side


def resize_pos_embed(pos_embed, src_grid, dst_grid, mode='bicubic'):
    """Resize a position embedding with a MIDDLE class token.

    The class token's row (at ``J // 2`` of the source) is kept apart, the
    patch rows are interpolated over the 2-D grid, and the class row is put
    back at ``J' // 2`` of the destination.

    Args:
        pos_embed: (1, J + 1, D), J = src_grid[0] * src_grid[1].
        src_grid, dst_grid: (rows, cols) of the patch grids.
        mode: interpolation mode of ``F.interpolate``.

    Returns:
        (1, J' + 1, D), J' = dst_grid[0] * dst_grid[1].
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    num_src = src_grid[0] * src_grid[1]
    if pos_embed.shape[1] != num_src + 1:
        raise ValueError(
            f'pos_embed has {pos_embed.shape[1]} rows, expected '
            f'{num_src + 1} for a {src_grid[0]}x{src_grid[1]} grid plus the '
            'class token')
    if src_grid == dst_grid:
        return pos_embed
    patches, cls_row = split_middle_cls(pos_embed)
    dim = patches.shape[-1]
    grid = patches.reshape(1, src_grid[0], src_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=dst_grid, mode=mode,
                         align_corners=False).to(pos_embed.dtype)
    patches = grid.flatten(2).transpose(1, 2)
    return insert_middle_cls(patches, cls_row)
