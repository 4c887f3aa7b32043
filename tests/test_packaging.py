"""mmvim as an installed package, not a checkout: a wheel built with
``pip wheel`` carries the ops' C++/CUDA sources, the configs, the tools and
the model index in ``mmvim/.mim``; installed from it into a scratch target,
the CPU scan kernel compiles from those sources (into a fresh extensions
folder) and computes what the reference scan does, and mim finds the model
zoo, trains a config and tests its checkpoint through the installed tools.

One wheel, one install and one kernel build serve the whole module."""
import glob
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNTHETIC_CONFIG = 'vim-tiny-p16_1xb32-200it_synthetic-in1k-64px.py'
# what setup.py needs to build a wheel; the rest of the checkout (the
# environment, data, work dirs, earlier builds) stays behind
SOURCE_TREE = ('setup.py', 'MANIFEST.in', 'README.md', 'model-index.yml',
               'mmvim', 'configs', 'tools', 'ops')
CHECKOUT_SOURCES = sorted(
    osp.relpath(path, ROOT) for pattern in ('*.cpp', '*.cu', '*.h', '*.cuh')
    for path in glob.glob(osp.join(ROOT, 'ops', '*', 'csrc', pattern)))


def run(cmd, cwd, env=None, timeout=600):
    done = subprocess.run(cmd,
                          cwd=cwd,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=timeout)
    assert done.returncode == 0, \
        f'{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
    return done


@pytest.fixture(scope='module')
def synthetic_in1k(tmp_path_factory):
    """The synthetic ImageNet-layout set, 4 training and 2 validation
    images per class."""
    root = tmp_path_factory.mktemp('synthetic_in1k')
    run([
        sys.executable,
        osp.join(ROOT, 'tools', 'dataset_converters',
                 'make_synthetic_imagenet.py'),
        str(root), '--train-per-class', '4', '--val-per-class', '2'
    ],
        cwd=str(root))
    return str(root)


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """``pip wheel`` of a copy of the checkout's working tree."""
    src = tmp_path_factory.mktemp('source')
    for name in SOURCE_TREE:
        path = osp.join(ROOT, name)
        if osp.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns(
                '__pycache__', '*.pyc', '.mim'))
        else:
            shutil.copyfile(path, src / name)
    out = tmp_path_factory.mktemp('wheel')
    run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
         '--no-build-isolation', '--wheel-dir', str(out), str(src)],
        cwd=str(out))
    wheels = glob.glob(str(out / 'mmvim-*.whl'))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope='module')
def site(wheel, tmp_path_factory):
    """The wheel installed into a scratch target beside the environment."""
    target = osp.realpath(tmp_path_factory.mktemp('site'))
    run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--target',
         target, wheel], cwd=target)
    return target


@pytest.fixture(scope='module')
def installed_env(site, tmp_path_factory):
    """Environment of a process that imports mmvim from ``site`` only and
    compiles kernels into a fresh folder; a cwd outside the checkout."""
    env = dict(os.environ, PYTHONPATH=site, MMVIM_SCAN_IMPL='cpu',
               MMVIM_EXTENSIONS_DIR=str(tmp_path_factory.mktemp('ext')))
    env.pop('PYTHONHOME', None)
    return env, str(tmp_path_factory.mktemp('cwd'))


@pytest.fixture(scope='module')
def kernel_run(site, installed_env):
    """One process of the installed package: where mmvim and the sources
    come from, the compiled kernel, and a bidirectional scan on it."""
    env, cwd = installed_env
    script = osp.join(cwd, 'scan_from_site.py')
    with open(script, 'w') as f:
        f.write("""import json, sys, torch
import mmvim
from mmvim.ops import bi_selective_scan, extension_loader, select_scan_impl
from mmvim.ops.selective_scan_kernel import build_kernel
library = build_kernel('cpu').__file__
torch.manual_seed(0)
b, E, N, L = 2, 8, 4, 37
u, delta, u_b, delta_b = (torch.randn(b, E, L) for _ in range(4))
A, A_b = -torch.rand(E, N), -torch.rand(E, N)
B, C, B_b, C_b = (torch.randn(b, N, L) for _ in range(4))
D, D_b, z = torch.randn(E), torch.randn(E), torch.randn(b, E, L)
inputs = (u, delta, A, B, C, D, u_b, delta_b, A_b, B_b, C_b, D_b)
y = bi_selective_scan(*inputs, z=z, delta_softplus=True)
torch.save(dict(inputs=inputs, z=z, y=y), sys.argv[1])
json.dump(dict(mmvim=mmvim.__file__, impl=select_scan_impl('cpu'),
               ops=extension_loader.OPS_SOURCE_DIR, library=library),
          open(sys.argv[2], 'w'))
""")
    tensors, report = osp.join(cwd, 'scan.pth'), osp.join(cwd, 'scan.json')
    done = run([sys.executable, script, tensors, report], cwd, env)
    return json.load(open(report)), torch.load(tensors), done.stderr


def test_wheel_carries_the_ops_sources_configs_tools_and_model_index(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    mim = 'mmvim/.mim/'
    for rel in CHECKOUT_SOURCES:
        assert mim + rel in names, rel
    configs = {
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                           recursive=True)
    }
    assert configs and all(mim + rel in names for rel in configs)
    for rel in ('model-index.yml', 'configs/vim/metafile.yml',
                'configs/hier_vim/metafile.yml', 'tools/train.py',
                'tools/test.py', 'tools/model_converters/vim2mmvim.py'):
        assert mim + rel in names, rel
    # the sources are the checkout's, byte for byte
    with zipfile.ZipFile(wheel) as archive:
        for rel in CHECKOUT_SOURCES:
            with open(osp.join(ROOT, rel), 'rb') as f:
                assert archive.read(mim + rel) == f.read(), rel
    assert not any('__pycache__' in name for name in names)


def test_installed_package_compiles_the_scan_kernel_from_its_sources(
        site, installed_env, kernel_run):
    from mmvim.ops import bi_selective_scan_ref
    report, saved, log = kernel_run
    ext_dir = installed_env[0]['MMVIM_EXTENSIONS_DIR']
    # mmvim and the sources came from the install, not from the checkout
    assert report['mmvim'] == osp.join(site, 'mmvim', '__init__.py')
    assert report['ops'] == osp.join(site, 'mmvim', '.mim', 'ops')
    assert report['impl'] == 'cpu'
    # compiled just now, in the fresh folder, from the installed sources
    assert osp.dirname(osp.dirname(report['library'])) == ext_dir
    assert 'building the cpu selective_scan kernel' in log
    with open(osp.join(osp.dirname(report['library']), 'build.ninja')) as f:
        ninja = f.read()
    compiled = [line.split(' compile ')[1] for line in ninja.splitlines()
                if line.startswith('build ') and ' compile ' in line]
    assert compiled == [osp.join(report['ops'], 'selective_scan', 'csrc',
                                 'selective_scan_cpu.cpp')]
    assert f"-I{report['ops']}/selective_scan/csrc" in ninja
    assert osp.join(ROOT, 'ops') not in ninja
    # and it computes what the checkout's reference scan computes
    expected = bi_selective_scan_ref(*saved['inputs'], z=saved['z'],
                                     delta_softplus=True)
    torch.testing.assert_close(saved['y'], expected, rtol=1e-5, atol=1e-5)


def mim(*args, env, cwd):
    return run([sys.executable, '-m', 'mim', *args], cwd, env)


def test_mim_search_lists_the_model_zoo(kernel_run, installed_env):
    env, cwd = installed_env
    out = osp.join(cwd, 'search.json')
    mim('search', 'mmvim', '--json', out, env=env, cwd=cwd)
    columns = json.load(open(out))  # {field: {model: value}}
    found = {}
    for field, values in columns.items():
        for name, value in values.items():
            found.setdefault(name, {})[field] = value
    metafiles = [yaml.safe_load(open(osp.join(ROOT, 'configs', family,
                                              'metafile.yml')))
                 for family in ('vim', 'hier_vim')]
    models = {m['Name']: m for meta in metafiles for m in meta['Models']}
    assert set(found) == set(models)
    for name, model in models.items():
        row = found[name]
        assert row['config'] == model['Config']
        assert row['parameters'] == model['Metadata']['Parameters']
        assert row['flops'] == model['Metadata']['FLOPs']
    tiny = found['vim-tiny-p16_8xb128_in1k']
    assert tiny['imagenet-1k/top_1_accuracy'] == 76.1
    assert tiny['model'] == 'vim'
    assert tiny['weight'].endswith('/vim_t_midclstok_76p1acc.pth')
    assert found['upernet_vim-tiny_8xb2-160k_ade20k-512x512'][
        'ade20k/miou'] == 41.0
    assert found['hier-vim-base_8xb128_in1k'][
        'imagenet-1k/top_1_accuracy'] == 83.9
    # the printed table, as a user sees it
    shown = mim('search', 'mmvim', '--model', 'hier-vim', env=env,
                cwd=cwd).stdout
    assert 'config id: hier-vim-tiny_8xb128_in1k' in shown
    assert 'configs/hier_vim/hier-vim-tiny_8xb128_in1k.py' in shown
    assert 'vim-tiny-p16' not in shown


def test_mim_trains_and_tests_a_config_of_the_installed_package(
        site, kernel_run, installed_env, synthetic_in1k):
    env, cwd = installed_env
    work_dir = osp.join(cwd, 'work')
    loaders = [f'{loader}.{key}' for loader in
               ('train_dataloader', 'val_dataloader', 'test_dataloader')
               for key in ('num_workers=0', 'persistent_workers=False',
                           f'dataset.data_root={synthetic_in1k}')]
    trained = mim('train', 'mmvim', SYNTHETIC_CONFIG, '--work-dir', work_dir,
                  '--cfg-options', 'train_cfg.max_iters=3',
                  'train_cfg.val_interval=1000',
                  'train_dataloader.batch_size=4',
                  'default_hooks.checkpoint.interval=3',
                  'default_hooks.logger.interval=1', *loaders,
                  env=env, cwd=cwd)
    # mim found the config and the training script inside the install
    config = osp.join(site, 'mmvim', '.mim', 'configs', 'vim',
                      SYNTHETIC_CONFIG)
    script = osp.join(site, 'mmvim', '.mim', 'tools', 'train.py')
    assert f'Training command is {sys.executable} {script} {config}' in \
        trained.stdout
    checkpoint = osp.join(work_dir, 'iter_3.pth')
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == 3
    assert any(key.startswith('backbone.layers.23.mixer')
               for key in state['state_dict'])
    scalars, = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    logged = [json.loads(line) for line in open(scalars)]
    steps = [row for row in logged if 'iter' in row]
    assert [row['iter'] for row in steps] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(row['loss'])) for row in steps)
    # the loop validated after its last iteration
    assert sum('accuracy/top1' in row for row in logged) == 1
    # ... and mim test scores that checkpoint with the installed test.py
    tested = mim('test', 'mmvim', SYNTHETIC_CONFIG, '--checkpoint',
                 checkpoint, '--work-dir', osp.join(cwd, 'test'),
                 '--cfg-options', *loaders, env=env, cwd=cwd)
    assert osp.join(site, 'mmvim', '.mim', 'tools', 'test.py') in \
        tested.stdout
    # the same checkpoint on the same val set: the training run's top-1
    validated, = [row['accuracy/top1'] for row in logged
                  if 'accuracy/top1' in row]
    scored = re.findall(r'accuracy/top1: ([0-9.]+)',
                        tested.stdout + tested.stderr)
    assert scored and float(scored[-1]) == pytest.approx(validated,
                                                         abs=1e-4)
