from .layer_decay_optim_wrapper_constructor import (
    VimLayerDecayOptimWrapperConstructor, is_no_weight_decay)

__all__ = ['VimLayerDecayOptimWrapperConstructor', 'is_no_weight_decay']
