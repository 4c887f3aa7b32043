from .settings_stamp import is_written_with, record_settings
from .synthetic_shapes import (SHAPE_COLOURS, SHAPES, paint, shape_mask,
                               textured_background)

__all__ = [
    'SHAPES', 'SHAPE_COLOURS', 'paint', 'shape_mask', 'textured_background',
    'is_written_with', 'record_settings'
]
