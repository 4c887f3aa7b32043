import torch.nn as nn


class VimPatchEmbed(nn.Module):
    """Image to patch tokens with one strided convolution, any input size.

    The grid is ``((H - patch_size) // stride + 1, (W - patch_size) // stride
    + 1)``: no padding and no assertion on the image size, so images that
    are not multiples of the stride simply lose their last partial patch.

    Args:
        in_channels (int): image channels.
        embed_dims (int): token width D.
        patch_size (int): kernel size of the projection.
        stride (int): stride of the projection (16, or 8 for the
            long-sequence variants).
    """

    def __init__(self, in_channels=3, embed_dims=192, patch_size=16,
                 stride=16):
        super().__init__()
        self.patch_size = patch_size
        self.stride = stride
        self.proj = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size,
                              stride=stride)

    def grid_size(self, img_hw):
        h, w = img_hw
        return ((h - self.patch_size) // self.stride + 1,
                (w - self.patch_size) // self.stride + 1)

    def forward(self, x):
        """x: (B, C, H, W) -> tokens (B, Hp * Wp, D), grid (Hp, Wp)."""
        h, w = x.shape[-2:]
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(
                f'input of {h}x{w} pixels is smaller than one '
                f'{self.patch_size}x{self.patch_size} patch; resize or pad '
                f'images to at least {self.patch_size} pixels per side')
        x = self.proj(x)
        grid = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (grid[0], grid[1])
