"""Convert a released Vim checkpoint into an mmpretrain ImageClassifier one.

    python tools/model_converters/vim2mmvim.py \
        vim_t_midclstok_76p1acc.pth checkpoints/vim-tiny-p16_in1k.pth

The released files (``{'model', 'model_ema', 'optimizer', 'args', ...}``) are
read with a weights-only load; ``'model'`` (or ``'model_ema'`` with
``--ema``) becomes ``backbone.*`` + ``head.fc.*`` in an mmengine-style
``{'state_dict', 'meta'}`` file. Nothing but the weights is carried over.
"""
import argparse
import os
import os.path as osp

import torch

from mmvim.engine import exit_on_user_error, load_checkpoint_file
from mmvim.models import checkpoint_state_dict, convert_official_to_mmpretrain


def parse_args():
    parser = argparse.ArgumentParser(
        description='Convert a released Vim checkpoint to mmpretrain keys')
    parser.add_argument('src', help='released Vim checkpoint (.pth)')
    parser.add_argument('dst', help='output path of the converted checkpoint')
    parser.add_argument('--ema', action='store_true',
                        help="convert 'model_ema' instead of 'model'")
    parser.add_argument('--force', action='store_true',
                        help='overwrite DST if it exists')
    return parser.parse_args()


def convert(src, dst, use_ema=False, force=False):
    if osp.abspath(src) == osp.abspath(dst):
        raise SystemExit(f'error: SRC and DST are the same file ({src}); '
                         'choose another output path')
    if osp.exists(dst) and not force:
        raise SystemExit(f'error: {dst} exists; pass --force to overwrite it')
    checkpoint = load_checkpoint_file(src, map_location='cpu')
    state_dict = convert_official_to_mmpretrain(
        checkpoint_state_dict(checkpoint, use_ema))
    meta = dict(converted_from=osp.basename(src),
                source_entry='model_ema' if use_ema else 'model')
    if isinstance(checkpoint.get('epoch'), int):
        meta['epoch'] = checkpoint['epoch']
    if osp.dirname(dst):
        os.makedirs(osp.dirname(dst), exist_ok=True)
    # write next to the target, then rename: a crash never leaves half a file
    tmp = dst + '.tmp'
    torch.save(dict(state_dict=state_dict, meta=meta), tmp)
    os.replace(tmp, dst)
    print(f'converted {len(state_dict)} tensors from {src} '
          f"('{meta['source_entry']}') to {dst}")
    return state_dict


def main():
    args = parse_args()
    with exit_on_user_error():
        convert(args.src, args.dst, args.ema, args.force)


if __name__ == '__main__':
    main()
