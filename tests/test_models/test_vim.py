import math

import pytest
import torch
import torch.nn.functional as F

from mmvim.models import Vim, resize_pos_embed
from mmvim.models.layers import DropPath, insert_middle_cls, split_middle_cls

SMALL = dict(embed_dims=32, depth=4)


def _grid(size, stride=16):
    return (size - 16) // stride + 1


@pytest.mark.parametrize('arch,dims', [('tiny', 192), ('ti', 192),
                                       ('small', 384), ('s', 384),
                                       ('base', 768), ('B', 768)])
def test_arch_zoo(arch, dims):
    model = Vim(arch)
    assert model.embed_dims == dims and len(model.layers) == 24
    mixer = model.layers[0].mixer
    assert mixer.d_inner == 2 * dims and mixer.d_state == 16
    assert mixer.dt_rank == math.ceil(dims / 16)


def test_parameter_count_vim_tiny():
    # 7.15 M with the 1000-class head (paper / released Vim-Ti)
    model = Vim('tiny')
    total = sum(p.numel() for p in model.parameters()) + 192 * 1000 + 1000
    assert abs(total / 1e6 - 7.15) < 0.01


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown arch 'tiny2', choose from"):
        Vim('tiny2')
    with pytest.raises(ValueError, match='embed_dims'):
        Vim(dict(embed_dims=32))
    with pytest.raises(ValueError, match='out_type'):
        Vim(SMALL, out_type='avg')
    with pytest.raises(ValueError, match='out of range'):
        Vim(SMALL, out_indices=(4, ))
    with pytest.raises(ValueError, match='at least 16 pixels'):
        Vim(SMALL)(torch.randn(1, 3, 15, 64))


@pytest.mark.parametrize('hw', [(16, 16), (17, 33), (100, 37), (64, 200)])
def test_any_input_size(hw):
    model = Vim(SMALL, img_size=64, out_indices=(1, 3),
                out_type='featmap').eval()
    outs = model(torch.randn(2, 3, *hw))
    assert len(outs) == 2
    for out in outs:
        assert out.shape == (2, 32, _grid(hw[0]), _grid(hw[1]))
        assert torch.isfinite(out).all()


def test_out_types_are_views_of_one_stream():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 80, 48)  # 5x3 grid: J = 15, class token at 7
    kw = dict(arch=SMALL, img_size=64, out_indices=(-1, ))
    raw_model = Vim(**kw, out_type='raw').eval()
    raw = raw_model(x)[0]
    assert raw.shape == (2, 16, 32)
    state = raw_model.state_dict()
    feat_model = Vim(**kw, out_type='featmap').eval()
    cls_model = Vim(**kw, out_type='cls_token').eval()
    feat_model.load_state_dict(state)
    cls_model.load_state_dict(state)
    torch.testing.assert_close(cls_model(x)[0], raw[:, 7])
    feat = feat_model(x)[0]
    patches = torch.cat([raw[:, :7], raw[:, 8:]], dim=1)
    torch.testing.assert_close(feat, patches.reshape(2, 5, 3, 32).permute(0, 3, 1, 2))


def test_final_norm_only_on_last_layer():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 48, 48)
    normed = Vim(SMALL, img_size=48, out_indices=(2, 3), out_type='raw').eval()
    plain = Vim(SMALL, img_size=48, out_indices=(2, 3), out_type='raw',
                final_norm=False).eval()
    plain.load_state_dict(normed.state_dict())
    a, b = normed(x), plain(x)
    torch.testing.assert_close(a[0], b[0])  # intermediate: no norm either way
    torch.testing.assert_close(a[1], normed.norm_f(b[1]))
    assert not torch.allclose(a[1], b[1])


def test_vim_tiny_512_gives_four_32x32_maps():
    model = Vim('tiny', img_size=224, out_indices=(5, 11, 17, 23),
                out_type='featmap').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 512, 512))
    assert [tuple(o.shape) for o in outs] == [(1, 192, 32, 32)] * 4


def test_1024_gives_64x64_maps():
    # the width of Vim-Ti, two layers: the grid logic is what is checked
    model = Vim(dict(embed_dims=192, depth=2), img_size=224,
                out_indices=(0, 1), out_type='featmap').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 1024, 1024))
    assert [tuple(o.shape) for o in outs] == [(1, 192, 64, 64)] * 2


def test_stride_8_grid_and_class_token_position():
    model = Vim(SMALL, img_size=224, stride=8)
    assert model.grid_size == (27, 27)
    assert model.pos_embed.shape == (1, 27 * 27 + 1, 32)
    tokens = torch.arange(729.).view(1, 729, 1)
    with_cls = insert_middle_cls(tokens, torch.full((1, 1, 1), -1.))
    assert with_cls[0, 364, 0] == -1  # J // 2 for the 27x27 grid
    patches, cls_row = split_middle_cls(with_cls)
    torch.testing.assert_close(patches, tokens)


def test_pos_embed_is_resized_on_the_fly():
    model = Vim(SMALL, img_size=64, out_type='raw').eval()
    grid = model.patch_embed.grid_size((96, 80))
    expected = resize_pos_embed(model.pos_embed, (4, 4), grid)
    assert model._pos_embed_for((4, 4)) is model.pos_embed
    torch.testing.assert_close(model._pos_embed_for(grid), expected)


def test_resize_pos_embed_keeps_class_row_apart():
    pos = torch.randn(1, 14 * 14 + 1, 8)
    out = resize_pos_embed(pos, (14, 14), (32, 20))
    assert out.shape == (1, 32 * 20 + 1, 8)
    torch.testing.assert_close(out[:, 320], pos[:, 98])
    # a constant patch grid stays constant (bicubic is exact on constants)
    const = torch.ones(1, 197, 8)
    const[:, 98] = 5.
    resized = resize_pos_embed(const, (14, 14), (27, 27))
    assert torch.allclose(resized[:, 364], torch.tensor(5.))
    torch.testing.assert_close(split_middle_cls(resized)[0],
                               torch.ones(1, 729, 8))
    with pytest.raises(ValueError, match='has 100 rows, expected 197'):
        resize_pos_embed(torch.randn(1, 100, 8), (14, 14), (16, 16))


def test_resize_pos_embed_against_explicit_interpolation():
    """The released models' recipe, written out here: the class row taken
    out at J // 2, the patch rows read as a row-major (rows, cols) grid,
    bicubic interpolation without corner alignment (what timm's
    resize_pos_embed does for the reference), the class row put back at
    J' // 2. A non-square grid with a ramp along the rows in channel 0 and
    along the columns in channel 1 catches a transposed or mis-flattened
    grid; channel 2 (noise) tells bicubic from bilinear."""
    rows, cols, new = 6, 10, (9, 4)
    g = torch.Generator().manual_seed(0)
    grid = torch.stack([
        torch.arange(rows, dtype=torch.float32).view(rows, 1).expand(
            rows, cols),
        torch.arange(cols, dtype=torch.float32).view(1, cols).expand(
            rows, cols),
        torch.randn(rows, cols, generator=g)
    ], dim=-1)  # (rows, cols, 3)
    patches = grid.reshape(1, rows * cols, 3)
    half = rows * cols // 2
    cls = torch.full((1, 1, 3), -7.)
    pos = torch.cat([patches[:, :half], cls, patches[:, half:]], dim=1)

    out = resize_pos_embed(pos, (rows, cols), new)

    count = new[0] * new[1]
    assert out.shape == (1, count + 1, 3)
    assert torch.equal(out[0, count // 2], cls[0, 0])
    got = torch.cat([out[:, :count // 2], out[:, count // 2 + 1:]],
                    dim=1).reshape(*new, 3)
    source = grid.permute(2, 0, 1).unsqueeze(0)  # (1, 3, rows, cols)
    want = F.interpolate(source, size=new, mode='bicubic',
                         align_corners=False)[0].permute(1, 2, 0)
    torch.testing.assert_close(got, want)
    # the row ramp varies down the rows only, the column ramp across only
    assert torch.allclose(got[..., 0], got[:, :1, 0].expand(*new))
    assert torch.allclose(got[..., 1], got[:1, :, 1].expand(*new))
    assert got[-1, 0, 0] > got[0, 0, 0] and got[0, -1, 1] > got[0, 0, 1]
    bilinear = F.interpolate(source, size=new, mode='bilinear',
                             align_corners=False)[0].permute(1, 2, 0)
    assert not torch.allclose(got[..., 2], bilinear[..., 2], atol=1e-3)


def test_load_state_dict_resizes_pos_embed():
    src = Vim(SMALL, img_size=224)
    dst = Vim(SMALL, img_size=512)
    dst.load_state_dict(src.state_dict())
    torch.testing.assert_close(
        dst.pos_embed, resize_pos_embed(src.pos_embed, (14, 14), (32, 32)))


def test_frozen_stages():
    model = Vim(SMALL, img_size=32, frozen_stages=2, drop_path_rate=0.5)
    model.train()
    frozen = [model.pos_embed, model.cls_token,
              *model.patch_embed.parameters(), *model.layers[0].parameters(),
              *model.layers[1].parameters()]
    assert all(not p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in model.layers[2].parameters())
    assert not model.layers[1].training and model.layers[2].training
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    assert model.layers[3].mixer.in_proj.weight.grad is not None
    assert model.layers[0].mixer.in_proj.weight.grad is None


def test_drop_path_drops_whole_samples():
    """Each sample of the branch is kept (scaled by 1 / keep) or dropped
    whole; about drop_prob of them are dropped; eval is the identity."""
    torch.manual_seed(0)
    drop = DropPath(0.5).train()
    out = drop(torch.ones(2000, 3, 4))
    per_sample = out.flatten(1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 2).all(1))
    assert abs(out.mean().item() - 1) < 0.1  # unbiased in expectation
    x = torch.randn(4, 5)
    assert drop.eval()(x) is x
    assert DropPath(0.).train()(x) is x


def test_drop_path_and_gradients():
    model = Vim(SMALL, img_size=32, drop_path_rate=0.3)
    rates = [layer.drop_path.drop_prob for layer in model.layers]
    # the reference's linear schedule over the layers
    torch.testing.assert_close(torch.tensor(rates),
                               torch.linspace(0, 0.3, SMALL['depth']))
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    # in eval, drop path is off: the model equals its twin without it
    twin = Vim(SMALL, img_size=32, drop_path_rate=0.).eval()
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x)[0], twin(x)[0], rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    out = model(x)[0]
    assert not torch.allclose(out, model.eval()(x)[0])
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_bf16_autocast_keeps_fp32_stream():
    model = Vim(SMALL, img_size=32, out_type='raw').eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # bfloat16 matmuls, float32 stream: close to the float32 model
    full = model(x)[0]
    assert ((out - full).norm() / full.norm()).item() < 3e-2
