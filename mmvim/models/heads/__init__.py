"""Classification heads for Vim's ablations. They build on mmpretrain's
heads, so this package imports mmpretrain: configs that use them import it
with ``custom_imports = dict(imports=['mmvim', 'mmvim.models.heads'])``."""
from .token_max_cls_head import TokenMaxClsHead

__all__ = ['TokenMaxClsHead']
