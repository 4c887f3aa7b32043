"""Evaluate a checkpoint with an mmvim config (the config's
``default_scope`` decides the task).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--show-dir DIR] [--cfg-options key=value ...]
        [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmvim  # noqa: F401  (registers the Vim modules, safe checkpoint loading)
from mmvim.engine import (check_data_roots, init_cpu_distributed,
                          shutdown_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument(
        '--out', help='dump the raw predictions to this pickle file')
    parser.add_argument(
        '--show-dir',
        help='write prediction overlays to this directory (relative paths '
        'are inside the run\'s log directory)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, e.g. '
        'test_dataloader.batch_size=4')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_overlays(cfg, show_dir):
    """Turn on the task's visualization hook so that it writes overlays."""
    hooks = cfg.default_hooks
    scope = cfg.get('default_scope')
    if scope == 'mmseg':
        hooks.visualization = dict(type='SegVisualizationHook', draw=True,
                                   interval=1)
        cfg.visualizer.save_dir = show_dir
    elif scope == 'mmdet':
        hooks.visualization = dict(type='DetVisualizationHook', draw=True,
                                   interval=1, test_out_dir=show_dir)
    elif scope == 'mmpretrain':
        hooks.visualization = dict(type='VisualizationHook', enable=True,
                                   interval=1, out_dir=show_dir)
    else:
        raise SystemExit(f'error: --show-dir is not supported for '
                         f'default_scope={scope!r}')


def main():
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint {args.checkpoint} not found')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    try:
        check_data_roots(cfg, loaders=('test_dataloader', ))
    except FileNotFoundError as error:
        raise SystemExit(f'error: {error}')
    if args.show_dir is not None:
        enable_overlays(cfg, args.show_dir)
    init_cpu_distributed(cfg, args.launcher)
    runner = (Runner.from_cfg(cfg)
              if 'runner_type' not in cfg else RUNNERS.build(cfg))
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit('error: --out must be a .pkl or .pickle file')
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    metrics = runner.test()
    shutdown_distributed()
    print(metrics)
    return metrics


if __name__ == '__main__':
    main()
