from mmpretrain.models.heads import LinearClsHead

from mmvim.registry import MODELS


@MODELS.register_module()
class TokenMaxClsHead(LinearClsHead):
    """Vim's "max pool" classifier (paper Table 5; the reference's
    ``final_pool_type='max'``): the linear classifier on every token, then
    the maximum of each class score over the tokens.

    It takes the backbone's every token, ``Vim(out_type='raw')`` (B, M, D),
    and gives (B, num_classes). Arguments are those of ``LinearClsHead``.
    """

    def forward(self, feats):
        tokens = self.pre_logits(feats)
        if tokens.dim() != 3:
            raise ValueError('TokenMaxClsHead takes every token (B, M, D), '
                             f'got {tuple(tokens.shape)}: set the backbone '
                             "to out_type='raw'")
        return self.fc(tokens).amax(dim=1)
