from .synthetic_shapes import (SHAPE_COLOURS, SHAPES, paint, shape_mask,
                               textured_background)

__all__ = ['SHAPES', 'SHAPE_COLOURS', 'paint', 'shape_mask', 'textured_background']
