"""Vim as the reference code trained it (docs/vim.md, Initialisation;
hustvl/Vim ``vim/models_mamba.py`` and its ``mamba_simple.py``): the
initialisation, and the ablation variants of the paper's Tables 4 and 5.
Expected statistics come from the rules (PyTorch's default bound
1 / sqrt(fan_in), Mamba's dt rules, LeCun normal), not from mmvim."""
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from mmvim.models import Vim
from mmvim.models.layers import apply_reference_rope, rope_tables
from mmvim.ops import selective_scan_ref
from saved_for_backward import compare_checkpointed_twin

TINY = dict(embed_dims=16, depth=2)
CONFIGS = osp.join(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))), 'configs')


def _uniform_std(bound):
    return bound / math.sqrt(3)


def _close_std(t, std, rel=0.05):
    return abs(t.std().item() - std) < rel * std


def test_reference_initialisation():
    depth, dims = 4, 128
    model = Vim(dict(embed_dims=dims, depth=depth), img_size=64)
    inner, rank, state = 2 * dims, math.ceil(dims / 16), 16
    mixer = model.layers[1].mixer
    # PyTorch's default (kaiming-uniform, a = sqrt(5)): U(+-1/sqrt(fan_in))
    for weight, fan_in in ((mixer.in_proj.weight, dims),
                           (mixer.x_proj.weight, inner),
                           (mixer.x_proj_b.weight, inner),
                           (mixer.conv1d.weight, 4),
                           (mixer.conv1d_b.weight, 4)):
        bound = 1 / math.sqrt(fan_in)
        assert weight.abs().max() <= bound
        assert _close_std(weight, _uniform_std(bound))
    # the depthwise convs keep PyTorch's default bias, U(+-1/sqrt(fan_in))
    assert mixer.conv1d.bias.abs().max() <= 0.5
    assert mixer.conv1d.bias.std() > 0.2
    # dt_proj: weight U(+-dt_rank^-0.5); softplus(bias) log-uniform in
    # [1e-3, 1e-1]
    for dt_proj in (mixer.dt_proj, mixer.dt_proj_b):
        bound = rank**-0.5
        assert dt_proj.weight.abs().max() <= bound
        assert _close_std(dt_proj.weight, _uniform_std(bound), rel=0.15)
        log_dt = F.softplus(dt_proj.bias).log()
        assert log_dt.min() >= math.log(1e-3) - 1e-4
        assert log_dt.max() <= math.log(1e-1) + 1e-4
        assert abs(log_dt.mean() - (math.log(1e-3) + math.log(1e-1)) / 2) \
            < 0.3
    # out_proj: kaiming-uniform redrawn, then / sqrt(depth)
    bound = 1 / math.sqrt(inner) / math.sqrt(depth)
    assert mixer.out_proj.weight.abs().max() <= bound
    assert _close_std(mixer.out_proj.weight, _uniform_std(bound))
    torch.testing.assert_close(
        mixer.A_log.data,
        torch.log(torch.arange(1, state + 1.)).expand(inner, state))
    assert torch.all(mixer.D == 1) and torch.all(mixer.D_b == 1)
    # patch conv: LeCun normal, std sqrt(1 / fan_in), truncated at 2 std of
    # the untruncated normal; zero bias
    proj = model.patch_embed.proj
    std = math.sqrt(1 / (3 * 16 * 16))
    assert _close_std(proj.weight, std)
    assert proj.weight.abs().max() <= 2 * std / 0.87962566103423978
    assert torch.all(proj.bias == 0)
    for token in (model.pos_embed, model.cls_token):
        assert _close_std(token, 0.02, rel=0.3 if token.numel() < 500
                          else 0.05)
    assert all(torch.all(layer.norm.weight == 1) for layer in model.layers)


def test_classifier_head_initialisation_of_the_configs():
    """The reference head: trunc-normal 0.02 weights, zero bias."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    for name in ('_base_/models/vim_in1k.py',
                 'vim/vim-tiny-p16_1xb32-200it_synthetic-in1k-64px.py'):
        cfg = Config.fromfile(osp.join(CONFIGS, name)).model
        cfg.backbone.arch = TINY
        # 16 x 1000 weights: their sample std is within 1.5% of the init's
        # (16 x 6 of the synthetic config would scatter by 7%)
        cfg.head.in_channels = 16
        cfg.head.num_classes = 1000
        torch.manual_seed(0)
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            model = MODELS.build(cfg)
        model.init_weights()
        fc = model.head.fc
        assert _close_std(fc.weight, 0.02, rel=0.1), name
        assert fc.weight.abs().max() <= 2 and torch.all(fc.bias == 0), name


# ------------------------------------------------------------ Table 5
def _identity_layers(model):
    """Zero every out_proj: the layers add nothing, the tokens pass
    through to norm_f as they entered."""
    with torch.no_grad():
        for layer in model.layers:
            layer.mixer.out_proj.weight.zero_()
    return model.eval()


@pytest.mark.parametrize('position,indices', [('head', [0]),
                                              ('middle', [8]),
                                              ('double', [0, 17])])
def test_class_token_position_and_readout(position, indices):
    """Where each layout puts its class token(s) (4x4 grid: J = 16) and
    that out_type='cls_token' reads those rows (the mean for 'double')."""
    kw = dict(arch=TINY, img_size=64, cls_token_position=position)
    raw_model = _identity_layers(Vim(out_type='raw', **kw))
    cls_model = _identity_layers(Vim(out_type='cls_token', **kw))
    cls_model.load_state_dict(raw_model.state_dict())
    names = {'double': ['cls_token_head', 'cls_token_tail']}.get(
        position, ['cls_token'])
    with torch.no_grad():
        for k, name in enumerate(names):
            getattr(raw_model, name).fill_(3.0 + k)
        cls_model.load_state_dict(raw_model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    raw = raw_model(x)[0]
    assert raw.shape == (2, 16 + len(indices), 16)
    pos = raw_model.pos_embed[0]
    for k, index in enumerate(indices):
        expected = raw_model.norm_f(3.0 + k + pos[index]).expand(2, -1)
        torch.testing.assert_close(raw[:, index], expected)
    readout = torch.stack([raw[:, i] for i in indices]).mean(0)
    torch.testing.assert_close(cls_model(x)[0], readout)


def test_mean_and_max_pool_without_class_token():
    kw = dict(arch=TINY, img_size=64, cls_token_position=None)
    model = Vim(out_type='raw', **kw).eval()
    assert not hasattr(model, 'cls_token')
    assert model.pos_embed.shape == (1, 16, 16)  # patches only
    mean_model = Vim(out_type='avg_featmap', **kw).eval()
    mean_model.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    tokens = model(x)[0]
    torch.testing.assert_close(mean_model(x)[0], tokens.mean(1))
    # max pool: the classifier on every token, then the max over tokens
    from mmengine.registry import DefaultScope
    from mmvim.models.heads import TokenMaxClsHead
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        head = TokenMaxClsHead(num_classes=5, in_channels=16)
    scores = head((tokens, ))
    expected = torch.stack([head.fc(tokens[:, t]) for t in range(16)]).amax(0)
    torch.testing.assert_close(scores, expected)
    with pytest.raises(ValueError, match="out_type='raw'"):
        head((tokens.mean(1), ))
    with pytest.raises(ValueError, match='needs a class token'):
        Vim(arch=TINY, cls_token_position=None, out_type='cls_token')


def test_without_absolute_position_embedding():
    model = Vim(arch=TINY, img_size=64, with_pos_embed=False).eval()
    assert model.pos_embed is None and 'pos_embed' not in model.state_dict()
    out = model(torch.randn(1, 3, 80, 48))[0]  # any size, nothing to resize
    assert out.shape == (1, 16) and torch.isfinite(out).all()


# ------------------------------------------------------------ Table 4
def _mixer_inputs(mixer, hidden):
    xz = mixer.in_proj(hidden).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    u = F.silu(F.conv1d(x, mixer.conv1d.weight, mixer.conv1d.bias,
                        padding=3, groups=x.shape[1])[..., :x.shape[-1]])
    dt, B, C = mixer.x_proj(u.transpose(1, 2)).split(
        [mixer.dt_rank, 16, 16], dim=-1)
    delta = mixer.dt_proj.weight @ dt.transpose(1, 2)
    return u, z, delta, B.transpose(1, 2), C.transpose(1, 2)


def _scan(mixer, u, delta, A_log, B, C, z):
    return selective_scan_ref(u, delta, -torch.exp(A_log), B, C, mixer.D, z,
                              mixer.dt_proj.bias, delta_softplus=True)


def test_unidirectional_mixer_is_mamba():
    model = Vim(arch=TINY, img_size=64, bidirectional='none').eval()
    mixer = model.layers[0].mixer
    assert not [n for n, _ in mixer.named_parameters() if '_b' in n]
    hidden = torch.randn(2, 17, 16)
    u, z, delta, B, C = _mixer_inputs(mixer, hidden)
    y = _scan(mixer, u, delta, mixer.A_log, B, C, z)
    torch.testing.assert_close(mixer(hidden),
                               mixer.out_proj(y.transpose(1, 2)))


def test_bidirectional_ssm_shares_conv_and_projections():
    """bimamba v1: the backward scan is the forward one's inputs flipped,
    with its own A_b_log, summed (never halved) before out_proj."""
    model = Vim(arch=TINY, img_size=64, bidirectional='ssm').eval()
    mixer = model.layers[0].mixer
    assert [n for n, _ in mixer.named_parameters() if '_b' in n] == \
        ['A_b_log']
    with torch.no_grad():
        mixer.A_b_log.add_(torch.rand_like(mixer.A_b_log))
    hidden = torch.randn(2, 17, 16)
    u, z, delta, B, C = _mixer_inputs(mixer, hidden)
    y_f = _scan(mixer, u, delta, mixer.A_log, B, C, z)
    y_b = _scan(mixer, u.flip(-1), delta.flip(-1), mixer.A_b_log,
                B.flip(-1), C.flip(-1), z.flip(-1)).flip(-1)
    torch.testing.assert_close(mixer(hidden),
                               mixer.out_proj((y_f + y_b).transpose(1, 2)))


def test_bidirectional_layers_are_flip_and_sum_of_two_layers():
    model = Vim(dict(embed_dims=16, depth=4), img_size=64,
                bidirectional='layers', out_type='raw',
                out_indices=(1, 3)).eval()
    x = torch.randn(2, 3, 64, 64)
    tokens, _ = model.patch_embed(x)
    from mmvim.models.layers import insert_middle_cls
    s = insert_middle_cls(tokens, model.cls_token.expand(2, -1, -1)) \
        + model.pos_embed
    outs = []
    for k in (0, 2):
        f, b = model.layers[k], model.layers[k + 1]
        branch_f = f.mixer(f.norm(s))
        branch_b = b.mixer(b.norm(s.flip(1))).flip(1)
        s = 2 * s + branch_f + branch_b  # outputs and residuals summed
        outs.append(s)
    got = model(x)
    torch.testing.assert_close(got[0], outs[0])
    torch.testing.assert_close(got[1], model.norm_f(outs[1]))
    with pytest.raises(ValueError, match='odd indices'):
        Vim(dict(embed_dims=16, depth=4), bidirectional='layers',
            out_indices=(0, 3))


def test_random_sequence_flip_in_training():
    """With probability 1 the layers see the sequence reversed and the
    outputs come back in the original order; never in evaluation."""
    kw = dict(arch=TINY, img_size=64, bidirectional='none', out_type='raw')
    flip = Vim(sequence_flip_prob=1.0, **kw)
    plain = Vim(**kw)
    plain.load_state_dict(flip.state_dict())
    x = torch.randn(2, 3, 64, 64)
    tokens, _ = plain.patch_embed(x)
    from mmvim.models.layers import insert_middle_cls
    s = (insert_middle_cls(tokens, plain.cls_token.expand(2, -1, -1))
         + plain.pos_embed).flip(1)
    for layer in plain.layers:
        s = layer(s)
    expected = plain.norm_f(s).flip(1)
    torch.testing.assert_close(flip.train()(x)[0], expected)
    torch.testing.assert_close(flip.eval()(x)[0], plain.eval()(x)[0])
    assert not torch.allclose(expected, plain(x)[0])


# ------------------------------------------------------------ rope
def test_rope_tables_follow_the_reference_construction():
    """VisionRotaryEmbeddingFast(dim=D/2, pt_seq_len=14, ft_seq_len=n):
    interleaved per-axis frequencies, rows then columns, row-major."""
    dims, side = 16, 4
    half = dims // 2
    freqs = 1 / 10000**(torch.arange(0, half, 2).float() / half)
    t = torch.arange(side) / side * 14
    per_axis = torch.einsum('i,f->if', t, freqs).repeat_interleave(2, -1)
    expected = torch.empty(side, side, dims)
    for r in range(side):
        for c in range(side):
            expected[r, c] = torch.cat([per_axis[r], per_axis[c]])
    cos, sin = rope_tables((side, side), dims)
    torch.testing.assert_close(cos, expected.reshape(-1, dims).cos())
    torch.testing.assert_close(sin, expected.reshape(-1, dims).sin())
    x = torch.randn(1, 17, dims)  # odd: token 0 is left as it is
    out = apply_reference_rope(x, cos, sin)
    torch.testing.assert_close(out[:, 0], x[:, 0])
    pair = x[:, 5, :2]  # token 5 <- grid row 4 = (1, 0), channels 0, 1
    angle = per_axis[1, 0]
    torch.testing.assert_close(
        out[:, 5, :2], torch.stack([pair[:, 0] * angle.cos() - pair[:, 1]
                                    * angle.sin(),
                                    pair[:, 1] * angle.cos() + pair[:, 0]
                                    * angle.sin()], -1))


@pytest.mark.parametrize('rope_residual', [False, True])
def test_rope_layers_follow_the_reference_loop(rope_residual):
    """The reference rotates each layer's output (and the residual with
    if_rope_residual) before the next layer adds it; the first layer sees
    the rotated embedding; the last output is added unrotated."""
    model = Vim(dict(embed_dims=16, depth=3), img_size=64, out_type='raw',
                rope=True, rope_residual=rope_residual).eval()
    x = torch.randn(2, 3, 64, 64)
    tokens, grid = model.patch_embed(x)
    from mmvim.models.layers import insert_middle_cls
    s = insert_middle_cls(tokens, model.cls_token.expand(2, -1, -1)) \
        + model.pos_embed
    cos, sin = rope_tables(grid, 16)

    def rope(t):
        return apply_reference_rope(t, cos, sin)

    residual, hidden = rope(s), None
    for i, layer in enumerate(model.layers):
        if hidden is not None:
            residual = (rope(residual) if rope_residual else residual) \
                + rope(hidden)
        hidden = layer.mixer(layer.norm(residual))
    torch.testing.assert_close(model(x)[0], model.norm_f(residual + hidden))


# ------------------------------------------------- reference checkpoints
# parameter names of the reference's mixer per bimamba_type (mamba_simple.py)
MIXER_KEYS = {
    'none': ['in_proj.weight', 'conv1d.weight', 'conv1d.bias',
             'x_proj.weight', 'dt_proj.weight', 'dt_proj.bias', 'A_log', 'D',
             'out_proj.weight'],
}
MIXER_KEYS['v1'] = MIXER_KEYS['none'] + ['A_b_log']
MIXER_KEYS['v2'] = MIXER_KEYS['v1'] + [
    'conv1d_b.weight', 'conv1d_b.bias', 'x_proj_b.weight', 'dt_proj_b.weight',
    'dt_proj_b.bias', 'D_b']

# (mmvim options, the reference's VisionMamba keys besides the layers)
VARIANTS = {
    'none': (dict(bidirectional='none', cls_token_position=None,
                  out_type='avg_featmap'), 'none', ['pos_embed']),
    'layers': (dict(bidirectional='layers', cls_token_position=None,
                    out_type='avg_featmap'), 'none', ['pos_embed']),
    'ssm': (dict(bidirectional='ssm', cls_token_position=None,
                 out_type='avg_featmap'), 'v1', ['pos_embed']),
    'flip': (dict(sequence_flip_prob=0.5, cls_token_position=None,
                  out_type='avg_featmap'), 'v2', ['pos_embed']),
    'head': (dict(cls_token_position='head'), 'v2',
             ['pos_embed', 'cls_token']),
    'double': (dict(cls_token_position='double'), 'v2',
               ['pos_embed', 'cls_token_head', 'cls_token_tail']),
    'no_abs_pos': (dict(with_pos_embed=False), 'v2', ['cls_token']),
    'rope': (dict(rope=True, rope_residual=True), 'v2',
             ['pos_embed', 'cls_token']),
}


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_reference_layout_checkpoint_loads(variant, tmp_path):
    """A stand-in of a checkpoint the reference code saves for the variant
    (its parameter names, a classifier head, rope's buffers) loads exactly
    and runs; the variant builds in the three scopes."""
    options, mixer_type, top_keys = VARIANTS[variant]
    model = Vim(dict(embed_dims=16, depth=2), img_size=64, **options)
    expected = set(top_keys) | {'patch_embed.proj.weight',
                                'patch_embed.proj.bias', 'norm_f.weight'}
    for i in range(2):
        expected |= {f'layers.{i}.norm.weight'}
        expected |= {f'layers.{i}.mixer.{k}' for k in MIXER_KEYS[mixer_type]}
    assert set(model.state_dict()) == expected
    g = torch.Generator().manual_seed(0)
    released = {k: torch.randn(v.shape, generator=g)
                for k, v in model.state_dict().items()}
    released['head.weight'] = torch.randn(10, 16)
    released['head.bias'] = torch.randn(10)
    if options.get('rope'):
        released['rope.freqs_cos'] = torch.randn(16, 16)
        released['rope.freqs_sin'] = torch.randn(16, 16)
    path = str(tmp_path / 'vim_variant.pth')
    torch.save({'model': released, 'epoch': 300}, path)
    fresh = Vim(dict(embed_dims=16, depth=2), img_size=64, **options,
                init_cfg=dict(type='Pretrained', checkpoint=path))
    fresh.init_weights()
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, released[key])
    out = fresh.eval()(torch.randn(1, 3, 64, 64))[0]
    assert torch.isfinite(out).all()
    for scope in ('mmpretrain', 'mmseg', 'mmdet'):
        registry = __import__(f'{scope}.registry', fromlist=['MODELS'])
        built = registry.MODELS.build(dict(
            type='Vim', arch=dict(embed_dims=16, depth=2), img_size=64,
            **options))
        assert isinstance(built, Vim)


# ------------------------------------------------ activation checkpointing
@pytest.mark.parametrize('options', [dict(), dict(bidirectional='layers'),
                                     dict(rope=True)],
                         ids=['released', 'layers', 'rope'])
def test_activation_checkpointing(options):
    """with_cp: the same output and gradients (drop path included: the RNG
    state is replayed), and fewer bytes kept for backward (saved-tensor
    hooks, parameters left out)."""
    kw = dict(arch=dict(embed_dims=32, depth=4), img_size=64,
              drop_path_rate=0.2, out_type='raw', **options)
    plain, ckpt = Vim(**kw).train(), Vim(with_cp=True, **kw).train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    saved, saved_cp = compare_checkpointed_twin(plain, ckpt, x)
    print(f'{options}: saved for backward {saved} -> {saved_cp} bytes')
    # measured (4-layer D = 32 twins at 64 px, batch 2, the image left
    # out): 6.6x fewer bytes, 16x for the paired layers, 5.7x with rope
    assert saved_cp < 0.3 * saved, (saved_cp, saved)
