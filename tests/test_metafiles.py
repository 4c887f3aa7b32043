"""The model zoo (model-index.yml and configs/*/metafile.yml, what
``mim search mmvim`` reads) describes the configs as they are: one model
per experiment config, complete OpenMMLab metafile entries, parameters of
the built models, FLOPs as get_flops.py counts them, the released weights
with the command that converts them, and the README's results tables
generated from it."""
import glob
import importlib.util
import os.path as osp
import shlex
import subprocess
import sys
from collections import Counter

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
INDEX = osp.join(ROOT, 'model-index.yml')


def load_tool(rel):
    spec = importlib.util.spec_from_file_location(
        osp.splitext(osp.basename(rel))[0], osp.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = load_tool('tools/misc/gen_results_tables.py')
MODELS = tables.load_models(INDEX)
BY_NAME = {model['Name']: model for model in MODELS}
# every experiment config: not the bases, not the CPU demos on synthetic data
EXPERIMENT_CONFIGS = sorted(
    osp.relpath(path, ROOT)
    for path in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                          recursive=True)
    if '_base_' not in path and 'synthetic' not in osp.basename(path))
# experiments the paper gives no number for
NO_PAPER_RESULT = {
    # Table 4 describes "Bidirectional Sequence" but reports no row for it
    'vim-tiny-p16-bidir-sequence_8xb128_in1k',
    'segmenter-mask_vim-tiny-bidir-sequence_8xb2-160k_ade20k-512x512',
    # appendix C evaluates Hier-Vim on ImageNet only
    'upernet_hier-vim-tiny_8xb2-160k_ade20k-512x512',
    'upernet_hier-vim-small_8xb2-160k_ade20k-512x512',
    'mask-rcnn_hier-vim-tiny_fpn_1x_coco',
    'mask-rcnn_hier-vim-tiny_fpn_ms-crop-3x_coco',
}
# the authors' files, and the configs they evaluate with
RELEASED = {
    'vim-tiny-p16_8xb128_in1k': 'vim_t_midclstok_76p1acc.pth',
    'vim-tiny-p16-s8_8xb128-ft30e_in1k': 'vim_t_midclstok_ft_78p3acc.pth',
    'vim-small-p16_8xb128_in1k': 'vim_s_midclstok_80p5acc.pth',
    'vim-small-p16-s8_8xb128-ft30e_in1k': 'vim_s_midclstok_ft_81p6acc.pth',
    'vim-base-p16_8xb128_in1k': 'vim_b_midclstok_81p9acc.pth',
}
TASKS = {
    'ImageNet-1k': {'Image Classification'},
    'ADE20K': {'Semantic Segmentation'},
    'COCO': {'Object Detection', 'Instance Segmentation'}
}
# Every entry's FLOPs are traced again (get_flops.py, the full-size model
# at the config's input): about 1-3 s per classifier and 3-10 s per dense
# model on the idle 2-core machine.
# Detection entries give the backbone's FLOPs (a two-stage detector's total
# depends on how many proposals it makes), as their metafiles say.
FLOPS_CHECKED = tuple(model['Name'] for model in MODELS)
DETECTION = {'Object Detection', 'Instance Segmentation'}


def build_model(config):
    """The model of ``config`` (no weights loaded), in its scope."""
    cfg = Config.fromfile(osp.join(ROOT, config))
    scope = cfg.default_scope
    __import__(f'{scope}.utils', fromlist=['register_all_modules'])\
        .register_all_modules(init_default_scope=False)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS'])
    model_cfg = cfg.model.copy()
    if cfg.get('data_preprocessor') is not None:  # as Runner.build_model
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(scope):
        return registry.MODELS.build(model_cfg)


def test_model_index_imports_every_metafile():
    with open(INDEX) as f:
        imports = yaml.safe_load(f)['Import']
    metafiles = sorted(
        osp.relpath(path, ROOT)
        for path in glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yml')))
    assert sorted(imports) == metafiles == [
        'configs/hier_vim/metafile.yml', 'configs/vim/metafile.yml']


def test_every_experiment_config_is_one_model():
    assert len(EXPERIMENT_CONFIGS) >= 20  # the glob found the configs
    configs = Counter(model['Config'] for model in MODELS)
    assert sorted(configs) == EXPERIMENT_CONFIGS
    assert set(configs.values()) == {1}
    assert len(BY_NAME) == len(MODELS)
    for model in MODELS:  # named after its config, as `mim search` shows it
        assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]


@pytest.mark.parametrize('name', sorted(BY_NAME))
def test_metafile_entry_is_complete(name):
    model = BY_NAME[name]
    collection = model['Collection']
    assert collection['Paper']['URL'] == 'https://arxiv.org/abs/2401.09417'
    assert osp.isfile(osp.join(ROOT, collection['README']))
    meta = model['Metadata']
    assert isinstance(meta['FLOPs'], int) and meta['FLOPs'] > 1e9
    assert isinstance(meta['Parameters'], int) and meta['Parameters'] > 1e6
    dataset = meta['Training Data']
    assert dataset in TASKS and meta['Batch Size'] in (16, 64, 1024)
    assert ('Epochs' in meta) != ('Iterations' in meta)
    if name in NO_PAPER_RESULT:
        assert 'Results' not in model
    else:
        results = model['Results']
        assert {r['Task'] for r in results} == TASKS[dataset]
        for result in results:
            assert result['Dataset'] == dataset
            assert result['Metrics'] and all(
                isinstance(v, float) and 30 < v < 100
                for v in result['Metrics'].values())
    if name in RELEASED:
        url = model['Weights']
        assert url.startswith('https://huggingface.co/hustvl/Vim-')
        assert osp.basename(url) == RELEASED[name]
        assert model['Converted From'] == dict(
            Weights=url,
            Code='https://github.com/hustvl/Vim/blob/main/vim/models_mamba.py')
        assert model['Convert'] == (
            'python tools/model_converters/vim2mmvim.py '
            f'{RELEASED[name]} checkpoints/{name}.pth')
    else:
        assert 'Weights' not in model and 'Convert' not in model


@pytest.mark.parametrize('name', sorted(BY_NAME))
def test_parameters_are_those_of_the_built_model(name):
    model = BY_NAME[name]
    built = build_model(model['Config'])
    count = sum(p.numel() for p in built.parameters())
    assert model['Metadata']['Parameters'] == pytest.approx(count, rel=0.01)


@pytest.mark.parametrize('name', FLOPS_CHECKED)
def test_flops_are_what_get_flops_counts(name):
    model = BY_NAME[name]
    get_flops = load_tool('tools/analysis_tools/get_flops.py')
    tasks = {r['Task'] for r in model.get('Results') or []}
    detection = bool(tasks & DETECTION) or 'rcnn' in model['Config']
    result = get_flops.analyse_config(osp.join(ROOT, model['Config']),
                                      backbone_only=detection)
    assert result['ssm_flops_counted'] == result['ssm_flops_formula'] > 0
    counted = result['backbone' if detection else 'model']['flops']
    assert model['Metadata']['FLOPs'] == pytest.approx(counted, rel=0.01)


def test_convert_command_fits_its_config(tmp_path, official_checkpoint):
    """The released Vim-Ti file (a stand-in in its exact layout), converted
    by the metafile's command, loads into its config's model, every key."""
    model = BY_NAME['vim-tiny-p16_8xb128_in1k']
    python, script, src, dst = shlex.split(model['Convert'])
    assert python == 'python'
    released = official_checkpoint('vim-ti')
    (tmp_path / src).write_bytes(open(released, 'rb').read())
    done = subprocess.run([sys.executable, osp.join(ROOT, script), src, dst],
                          cwd=str(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    state = torch.load(tmp_path / dst, map_location='cpu')['state_dict']
    built = build_model(model['Config'])
    built.load_state_dict(state, strict=True)
    torch.testing.assert_close(
        built.backbone.pos_embed,
        torch.load(released, weights_only=False)['model']['pos_embed'])


def test_readme_tables_are_generated_from_the_metafiles():
    with open(osp.join(ROOT, 'README.md')) as f:
        _, block, _ = tables.split_readme(f.read())
    assert block == tables.results_tables(MODELS).strip('\n')
    assert '| vim-tiny-p16_8xb128_in1k | 7.15 | 1.53 | 76.1 | 93.0 |' in block
