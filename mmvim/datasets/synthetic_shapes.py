"""Procedural scenes of shapes for the embedded demo datasets.

Learnable images made without any download: textured backgrounds, objects
whose class is decided by their shape (and, for the dense tasks, colour and
texture). The generators under ``tools/dataset_converters`` write them in the
exact on-disk formats of ImageNet, ADE20K and COCO, so that the real
mmpretrain / mmseg / mmdet loaders read them.
"""
import cv2
import numpy as np

SHAPES = ('circle', 'square', 'triangle', 'cross', 'ring', 'star')
# a saturated colour per shape (BGR, as cv2 writes images); objects of the
# demo classes are painted in their class colour with some jitter
SHAPE_COLOURS = ((40, 40, 220), (40, 200, 40), (220, 60, 40), (30, 210, 230),
                 (210, 40, 210), (220, 210, 40))


def textured_background(rng, height, width):
    """(H, W, 3) uint8: smooth, mostly grey colour field + random stripes +
    noise (desaturated, so that painted objects stand out)."""
    low = rng.uniform(60, 200, size=(3, 3, 3)).astype(np.float32)
    low = 0.35 * low + 0.65 * low.mean(axis=-1, keepdims=True)
    image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi /
                     period)
    image += rng.uniform(5, 25) * stripes[..., None]
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def shape_mask(shape, height, width, center, size, angle=0.):
    """Binary (H, W) uint8 mask of one shape of radius ``size`` pixels."""
    mask = np.zeros((height, width), np.uint8)
    cx, cy = center
    r = max(float(size), 2.)

    def polygon(points):
        rot = np.array([[np.cos(angle), -np.sin(angle)],
                        [np.sin(angle), np.cos(angle)]])
        pts = np.asarray(points, np.float64) @ rot.T + [cx, cy]
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)

    if shape == 'circle':
        cv2.circle(mask, (int(cx), int(cy)), int(r), 1, -1)
    elif shape == 'ring':
        cv2.circle(mask, (int(cx), int(cy)), int(r), 1, -1)
        cv2.circle(mask, (int(cx), int(cy)), int(r * 0.55), 0, -1)
    elif shape == 'square':
        polygon([(-r, -r), (r, -r), (r, r), (-r, r)])
    elif shape == 'triangle':
        polygon([(0, -r), (r * 0.95, r * 0.7), (-r * 0.95, r * 0.7)])
    elif shape == 'cross':
        w = r * 0.35
        polygon([(-r, -w), (r, -w), (r, w), (-r, w)])
        polygon([(-w, -r), (w, -r), (w, r), (-w, r)])
    elif shape == 'star':
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        polygon(np.stack([radius * np.cos(t), radius * np.sin(t)], 1))
    else:
        raise ValueError(f"unknown shape '{shape}', choose from {SHAPES}")
    return mask


def paint(image, mask, rng, colour=None, texture=None):
    """Paint ``mask`` into ``image`` in place with a colour and a texture
    ('flat', 'stripes' or 'dots'); random when not given."""
    colour = (rng.uniform(0, 255, 3) if colour is None else
              np.asarray(colour, np.float32))
    texture = texture or rng.choice(['flat', 'stripes', 'dots'])
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float32).copy()
    if texture == 'stripes':
        fill *= (0.65 + 0.35 * (((xx + yy) // 3) % 2))[..., None]
    elif texture == 'dots':
        fill *= (0.6 + 0.4 * ((xx % 4 < 2) & (yy % 4 < 2)))[..., None]
    fill += rng.normal(0, 6, size=fill.shape)
    sel = mask.astype(bool)
    image[sel] = np.clip(fill[sel], 0, 255).astype(np.uint8)
    return image
