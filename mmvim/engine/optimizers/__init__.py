from .layer_decay_optim_wrapper_constructor import (
    VimLayerDecayOptimWrapperConstructor, get_vim_layer_id, is_no_weight_decay)

__all__ = [
    'VimLayerDecayOptimWrapperConstructor', 'get_vim_layer_id',
    'is_no_weight_decay'
]
