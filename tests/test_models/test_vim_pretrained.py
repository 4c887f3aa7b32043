import pytest
import torch

import make_official_weights
from mmvim.models import Vim, resize_pos_embed



@pytest.fixture
def log_lines(monkeypatch):
    lines = []
    import mmvim.models.backbones.vim as vim_module
    monkeypatch.setattr(vim_module, 'print_log',
                        lambda msg, **kw: lines.append(msg))
    return lines


def test_released_file_through_init_cfg(official_checkpoint, log_lines):
    path = official_checkpoint('vim-ti', 0)
    model = Vim('tiny', img_size=512, out_indices=(5, 11, 17, 23),
                out_type='featmap',
                init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    released = make_official_weights.make_state_dict('vim-ti', 0)
    torch.testing.assert_close(model.layers[7].mixer.x_proj_b.weight,
                               released['layers.7.mixer.x_proj_b.weight'])
    torch.testing.assert_close(model.norm_f.weight, released['norm_f.weight'])
    torch.testing.assert_close(
        model.pos_embed, resize_pos_embed(released['pos_embed'], (14, 14), (32, 32)))
    line = log_lines[-1]
    assert 'released Vim layout' in line and '413 tensors mapped' in line
    assert 'dropped head.bias, head.weight' in line
    assert 'resized from 14x14 grid with the class token at index 98 to ' \
        '32x32 grid with the class token at index 512' in line
    outs = model.eval()(torch.randn(1, 3, 512, 512))
    assert [tuple(o.shape) for o in outs] == [(1, 192, 32, 32)] * 4


def test_stride8_file_into_stride16_config(official_checkpoint, log_lines):
    model = Vim('tiny', img_size=512, init_cfg=dict(
        type='Pretrained', checkpoint=official_checkpoint('vim-ti-s8', 1)))
    model.init_weights()
    released = make_official_weights.make_state_dict('vim-ti-s8', 1)
    assert released['pos_embed'].shape == (1, 730, 192)
    torch.testing.assert_close(
        model.pos_embed, resize_pos_embed(released['pos_embed'], (27, 27), (32, 32)))
    assert '27x27 grid with the class token at index 364' in log_lines[-1]


def test_openmmlab_layout_and_ema(official_checkpoint, tmp_path, log_lines):
    released = make_official_weights.make_state_dict('vim-ti', 2)
    mm = {'backbone.' + k: v for k, v in released.items()
          if not k.startswith('head.')}
    mm['decode_head.conv_seg.weight'] = torch.zeros(150, 512, 1, 1)
    path = tmp_path / 'iter_100.pth'
    torch.save({'state_dict': mm, 'meta': {'iter': 100}}, path)
    model = Vim('tiny')
    model.load_pretrained(str(path))
    torch.testing.assert_close(model.pos_embed, released['pos_embed'])
    assert 'OpenMMLab layout' in log_lines[-1]
    assert 'decode_head.conv_seg.weight' in log_lines[-1]

    # the stand-in's 'model_ema' differs from its 'model': each loads its own
    ema = make_official_weights.make_state_dict(
        'vim-ti', make_official_weights.EMA_SEED_OFFSET)
    model.load_pretrained(official_checkpoint('vim-ti', 0), use_ema=True)
    torch.testing.assert_close(model.cls_token, ema['cls_token'])
    torch.testing.assert_close(model.layers[7].mixer.A_log,
                               ema['layers.7.mixer.A_log'])
    model.load_pretrained(official_checkpoint('vim-ti', 0))
    torch.testing.assert_close(
        model.cls_token,
        make_official_weights.make_state_dict('vim-ti', 0)['cls_token'])


def test_wrong_architecture_is_a_clear_error(official_checkpoint):
    model = Vim('tiny')
    with pytest.raises(ValueError) as info:
        model.load_pretrained(official_checkpoint('vim-s', 0))
    message = str(info.value)
    assert 'shape mismatch' in message and 'layers.0.mixer.A_log' in message
    assert "embed_dims=384, depth=24" in message and "set arch='small'" in message


def test_missing_keys_are_named(tmp_path):
    released = make_official_weights.make_state_dict('vim-ti', 0)
    del released['layers.3.mixer.D_b']
    path = tmp_path / 'partial.pth'
    torch.save({'model': released}, path)
    with pytest.raises(ValueError, match=r'missing \(1\): layers.3.mixer.D_b'):
        Vim('tiny').load_pretrained(str(path))


def test_not_a_vim_file(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match='not a Vim checkpoint'):
        Vim('tiny').load_pretrained(str(path))
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        Vim('tiny').load_pretrained(str(tmp_path / 'nowhere.pth'))
