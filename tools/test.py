"""Evaluate a checkpoint with an mmvim config (the config's
``default_scope`` decides the task).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--show-dir DIR] [--cfg-options key=value ...]
        [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse
import os.path as osp

from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmvim  # noqa: F401  (registers the Vim modules, safe checkpoint loading)
from mmvim.engine import (add_runner_args, check_data_roots,
                          config_from_args, exit_on_user_error,
                          init_cpu_distributed, quiet_known_warnings,
                          shutdown_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out', help='dump the raw predictions to this pickle file')
    parser.add_argument(
        '--show-dir',
        help='write prediction overlays to this directory (relative paths '
        'are inside the run\'s log directory)')
    return add_runner_args(parser).parse_args()


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
    quiet_known_warnings()
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise SystemExit('error: --out must be a .pkl or .pickle file')
    with exit_on_user_error():
        if not osp.isfile(args.checkpoint):
            raise FileNotFoundError(f'checkpoint {args.checkpoint} not found')
        cfg = config_from_args(args)
        cfg.load_from = args.checkpoint
        check_data_roots(cfg, loaders=('test_dataloader', ))
        if args.show_dir is not None:
            enable_overlays(cfg, args.show_dir)
        init_cpu_distributed(cfg, args.launcher)
        runner = (Runner.from_cfg(cfg)
                  if 'runner_type' not in cfg else RUNNERS.build(cfg))
        if args.out is not None:
            runner.test_evaluator.metrics.append(
                DumpResults(out_file_path=args.out))
        metrics = runner.test()
    shutdown_distributed()
    print(metrics)
    return metrics


if __name__ == '__main__':
    main()
