"""The reference code's rotary position embedding for Vim (``if_rope``).

hustvl/Vim ``vim/rope.py`` (``VisionRotaryEmbeddingFast``, built in
``vim/models_mamba.py`` with ``dim = embed_dim // 2``, ``pt_seq_len = 14``
and ``ft_seq_len = img_size // patch_size``): per grid axis, frequencies
``theta ** (-2i / d)`` (d = D / 2, i < d / 2) times the positions
``arange(n) / n * 14``, each repeated twice (interleaved); the row
frequencies fill the first D / 2 channels, the column frequencies the last
D / 2, token ``r * cols + c`` of the row-major grid. A token x becomes
``x * cos + rotate_half(x) * sin`` with ``rotate_half`` turning each channel
pair (x0, x1) into (-x1, x0).

The reference applies it to whole sequences: when their length is odd it
leaves token 0 unrotated and rotates tokens 1.. with the grid's J rows,
which assumes a class token at the front. With the middle class token that
rotates the class token with a patch position and leaves patch 0 as it is;
mmvim reproduces this so that models trained with rope by the reference
code compute what they computed there. Frequencies are computed for the
grid of each input (the reference's fixed one at ``img_size``), so
checkpoints need no ``rope.freqs_*`` buffers (they are dropped on load).
"""
import torch


def rope_tables(grid, dims, pretrain_side=14, theta=10000.0,
                device=None):
    """(cos, sin) of shape (rows * cols, dims) for a patch grid."""
    if dims % 4:
        raise ValueError(f'rope needs embed_dims divisible by 4, got {dims}')
    half = dims // 2
    inv_freq = 1.0 / theta**(torch.arange(0, half, 2, device=device,
                                          dtype=torch.float32) / half)
    axes = []
    for side in grid:
        pos = torch.arange(side, device=device,
                           dtype=torch.float32) / side * pretrain_side
        axes.append(torch.outer(pos, inv_freq).repeat_interleave(2, dim=-1))
    rows, cols = axes
    freqs = torch.cat([rows[:, None].expand(-1, len(cols), -1),
                       cols[None].expand(len(rows), -1, -1)], dim=-1)
    freqs = freqs.reshape(-1, dims)
    return freqs.cos(), freqs.sin()


def rotate_half(x):
    """(..., 2k) -> each channel pair (x0, x1) turned into (-x1, x0)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_reference_rope(x, cos, sin):
    """The reference's rope on a token sequence x (B, M, D) with the tables
    of a J-patch grid: all tokens when M == J, tokens 1.. when M is odd and
    M == J + 1 (token 0 kept), as ``VisionRotaryEmbeddingFast.forward``."""
    num = cos.shape[0]
    length = x.shape[1]
    if length == num:
        return x * cos + rotate_half(x) * sin
    if length == num + 1 and length % 2 == 1:
        rotated = x[:, 1:] * cos + rotate_half(x[:, 1:]) * sin
        return torch.cat([x[:, :1], rotated], dim=1)
    raise ValueError(
        f'rope takes a sequence of the {num} patch tokens, or of an odd '
        f'{num + 1} tokens with one class token (as the reference code); '
        f'got {length} tokens: use rope with one class token on a grid of '
        'an even number of patches, or none')
