"""Train a model from an mmvim config (segmentation, detection or
classification: the config's ``default_scope`` decides).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--cfg-options key=value ...] [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse
import os.path as osp

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmvim  # noqa: F401  (registers the Vim modules, safe checkpoint loading)
from mmvim.engine import (add_runner_args, check_data_roots, check_load_from,
                          config_from_args, exit_on_user_error,
                          init_cpu_distributed, quiet_known_warnings,
                          shutdown_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or, with no value, from the '
        'latest checkpoint in the work dir')
    parser.add_argument(
        '--amp', action='store_true',
        help='enable automatic mixed precision training (needs a GPU)')
    return add_runner_args(parser).parse_args()


def apply_args(cfg, args):
    """Fold the training options (--amp, --resume) into the config."""
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit('error: --amp needs a CUDA GPU; drop --amp to '
                             'train in float32 on this machine')
        if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise SystemExit(f'error: --resume {args.resume}: no such file')
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main():
    args = parse_args()
    quiet_known_warnings()
    with exit_on_user_error():
        cfg = apply_args(config_from_args(args), args)
        check_data_roots(cfg, loaders=('train_dataloader', 'val_dataloader'))
        check_load_from(cfg)
        init_cpu_distributed(cfg, args.launcher)
        runner = (Runner.from_cfg(cfg)
                  if 'runner_type' not in cfg else RUNNERS.build(cfg))
        runner.train()
    shutdown_distributed()


if __name__ == '__main__':
    main()
