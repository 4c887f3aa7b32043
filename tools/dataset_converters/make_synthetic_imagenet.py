"""Write a small synthetic classification dataset in ImageNet's layout.

    python tools/dataset_converters/make_synthetic_imagenet.py data/synthetic_in1k

Layout (what mmpretrain's ``ImageNet`` dataset reads)::

    data/synthetic_in1k/
        train/<class>/<class>_00000.JPEG ...
        val/<class>/<class>_00000.JPEG ...
        meta/train.txt    "<class>/<file>.JPEG <label>" per line
        meta/val.txt
        meta/classes.txt  one class name per line, in label order

The class of an image is the shape of its object, painted in the class's
colour with jitter and a random texture, at a random size, position and
rotation on a textured background. Re-running with the
same arguments reuses a complete dataset and writes nothing.
"""
import argparse
import os
import os.path as osp

import cv2
import numpy as np

from mmvim.datasets import (SHAPE_COLOURS, SHAPES, is_written_with, paint,
                            record_settings, shape_mask, textured_background)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('out_dir', help='dataset root to write')
    parser.add_argument('--img-size', type=int, default=64)
    parser.add_argument('--train-per-class', type=int, default=200)
    parser.add_argument('--val-per-class', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def render(rng, size, label):
    image = textured_background(rng, size, size)
    radius = rng.uniform(0.22, 0.4) * size
    center = rng.uniform(radius, size - radius, 2)
    mask = shape_mask(SHAPES[label], size, size, center, radius,
                      angle=rng.uniform(-0.4, 0.4))
    colour = np.clip(
        np.asarray(SHAPE_COLOURS[label]) + rng.uniform(-30, 30, 3), 0, 255)
    return paint(image, mask, rng, colour=colour)


def make_dataset(out_dir, img_size=64, train_per_class=200, val_per_class=30,
                 seed=0):
    """Write the dataset (or reuse a complete one); returns the class list."""
    settings = dict(img_size=img_size, train_per_class=train_per_class,
                    val_per_class=val_per_class, seed=seed,
                    classes=list(SHAPES), colours=[list(c) for c in SHAPE_COLOURS])
    done = osp.join(out_dir, 'meta', 'settings.json')
    if is_written_with(done, settings):
        print(f'synthetic ImageNet-layout dataset ready in {out_dir}')
        return list(SHAPES)
    os.makedirs(osp.join(out_dir, 'meta'), exist_ok=True)
    for split, per_class, split_seed in (('train', train_per_class, seed),
                                         ('val', val_per_class, seed + 1)):
        rng = np.random.default_rng(split_seed)
        lines = []
        for label, shape in enumerate(SHAPES):
            os.makedirs(osp.join(out_dir, split, shape), exist_ok=True)
            for i in range(per_class):
                name = f'{shape}/{shape}_{i:05d}.JPEG'
                image = render(rng, img_size, label)
                cv2.imwrite(osp.join(out_dir, split, name), image,
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
                lines.append(f'{name} {label}')
        with open(osp.join(out_dir, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    with open(osp.join(out_dir, 'meta', 'classes.txt'), 'w') as f:
        f.write('\n'.join(SHAPES) + '\n')
    record_settings(done, settings)
    print(f'wrote {len(SHAPES) * (train_per_class + val_per_class)} images '
          f'of {len(SHAPES)} classes to {out_dir}')
    return list(SHAPES)


def main():
    args = parse_args()
    make_dataset(args.out_dir, args.img_size, args.train_per_class,
                 args.val_per_class, args.seed)


if __name__ == '__main__':
    main()
