"""Small, real training runs for the launch tests (multi-process, Slurm,
resume after a kill): a 2-layer, 32-wide Vim classifier on the synthetic
ImageNet set, single-process data loading, a few iterations; and the
loading of the analysis tools the tool tests call in-process."""
import importlib.util
import json
import os
import os.path as osp
import socket
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HERE = osp.dirname(osp.abspath(__file__))
CLASSIFIER_CONFIG = osp.join(
    ROOT, 'configs', 'vim', 'vim-tiny-p16_1xb32-200it_synthetic-in1k-64px.py')
TOOLS = osp.join(ROOT, 'tools', 'analysis_tools')


def analysis_tool(name):
    """The module tools/analysis_tools/<name>.py (scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_classifier_config(path, extra=''):
    """Write the classification demo config with a 2-layer, 32-wide Vim (and
    the hooks of ``run_probes`` importable) to ``path``; ``extra`` is
    appended config text."""
    with open(path, 'w') as f:
        f.write(f"""_base_ = [{CLASSIFIER_CONFIG!r}]
custom_imports = dict(imports=['mmvim', 'run_probes'],
                      allow_failed_imports=False)
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depth=2)),
    head=dict(in_channels=32))
{extra}""")
    return str(path)


def options(data_root, max_iters, *extra, val_interval=1000):
    """``--cfg-options`` for a short run on ``data_root``: batch 4, data
    loaded in the main process, a checkpoint every 2 iterations."""
    return ['--cfg-options', f'train_cfg.max_iters={max_iters}',
            f'train_cfg.val_interval={val_interval}',
            'train_dataloader.batch_size=4',
            'default_hooks.checkpoint.interval=2',
            'default_hooks.logger.interval=1',
            *loader_options(data_root), *extra]


def loader_options(data_root):
    """``--cfg-options`` items that point the train, val and test loaders
    at ``data_root`` and load their data in the main process."""
    return [f'{loader}.{key}'
            for loader in ('train_dataloader', 'val_dataloader',
                           'test_dataloader')
            for key in ('num_workers=0', 'persistent_workers=False',
                        f'dataset.data_root={data_root}')]


def probe_env(**overrides):
    """The environment of a run whose config imports ``run_probes``."""
    env = dict(os.environ, **overrides)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (HERE, env.get('PYTHONPATH')) if p)
    return env


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def launch(script, *args):
    """Run ``tools/SCRIPT`` (``dist_train.sh``, ``dist_test.sh``) with this
    Python, a free port and the probes importable."""
    env = probe_env(PYTHON=sys.executable, PORT=str(free_port()))
    return subprocess.run(['bash', osp.join(ROOT, 'tools', script), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)


def check_two_gloo_ranks(work_dir, batch_size, steps=2):
    """``RankRecordHook``'s records of a 2-rank run: one gloo group of world
    size 2, disjoint images on the ranks at every step, and the same
    weights on both after every step (DDP averaged the gradients)."""
    records = [json.load(open(osp.join(work_dir, 'ranks', f'rank{r}.json')))
               for r in range(2)]
    assert [(r['rank'], r['world_size'], r['backend']) for r in records] == \
        [(0, 2, 'gloo'), (1, 2, 'gloo')]
    for step in range(steps):
        first, second = (set(r['batches'][step]) for r in records)
        assert len(first) == len(second) == batch_size and not first & second
    assert records[0]['weights'] == records[1]['weights']
    assert len(set(records[0]['weights'])) == steps
