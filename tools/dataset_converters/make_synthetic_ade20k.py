"""Write a small synthetic segmentation dataset in ADE20K's on-disk layout.

    python tools/dataset_converters/make_synthetic_ade20k.py data/synthetic_ade20k

Layout (what mmseg's ``ADE20KDataset`` reads, like ADEChallengeData2016)::

    data/synthetic_ade20k/
        images/training/ADE_train_00000001.jpg ...
        images/validation/ADE_val_00000001.jpg ...
        annotations/training/ADE_train_00000001.png ...   uint8 label maps
        annotations/validation/ADE_val_00000001.png ...

Labels follow ADE20K: 0 = "other" (ignored with ``reduce_zero_label``), 1..150
the ADE20K classes. Each image has two textured "stuff" regions split by a
random horizon (ADE ``wall`` = 1 above, ``floor`` = 4 below) and a few
objects whose class is decided by shape, colour and texture together (see
``OBJECT_CLASSES``); a one-pixel ring around every object is 0, as ADE20K's
unlabelled borders are. Re-running with the same arguments reuses a complete
dataset and writes nothing.
"""
import argparse
import os
import os.path as osp

import cv2
import numpy as np

from mmvim.datasets import (SHAPE_COLOURS, SHAPES, is_written_with, paint,
                            record_settings, shape_mask)

# ADE20K label id -> (shape, colour index, texture); the ids are ADE20K
# classes (person, car, chair, table, plant, lamp)
OBJECT_CLASSES = {
    13: ('circle', 0, 'flat'),
    21: ('square', 1, 'stripes'),
    20: ('triangle', 2, 'dots'),
    16: ('cross', 3, 'flat'),
    18: ('ring', 4, 'stripes'),
    37: ('star', 5, 'dots'),
}
WALL, FLOOR = 1, 4


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('out_dir', help='dataset root to write')
    parser.add_argument('--img-size', type=int, default=128)
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def stuff(rng, height, width, base):
    """A textured stuff region: base grey level, stripes, noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(5, 12)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    tone = np.asarray(base, np.float32) + rng.uniform(-20, 20, 3)
    image = tone + 18 * wave[..., None] + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def render(rng, size):
    """One (image BGR uint8, label uint8) pair."""
    horizon = int(rng.uniform(0.3, 0.7) * size)
    image = np.empty((size, size, 3), np.uint8)
    image[:horizon] = stuff(rng, horizon, size, (150, 150, 140))
    image[horizon:] = stuff(rng, size - horizon, size, (90, 100, 110))
    label = np.full((size, size), FLOOR, np.uint8)
    label[:horizon] = WALL
    ids = list(OBJECT_CLASSES)
    for _ in range(rng.integers(2, 5)):
        cls = ids[rng.integers(len(ids))]
        shape, colour_index, texture = OBJECT_CLASSES[cls]
        radius = rng.uniform(0.1, 0.2) * size
        center = rng.uniform(radius, size - radius, 2)
        mask = shape_mask(shape, size, size, center, radius,
                          angle=rng.uniform(-0.4, 0.4))
        colour = np.clip(
            np.asarray(SHAPE_COLOURS[colour_index]) + rng.uniform(-25, 25, 3),
            0, 255)
        paint(image, mask, rng, colour=colour, texture=texture)
        ring = cv2.dilate(mask, np.ones((3, 3), np.uint8)) - mask
        label[ring.astype(bool)] = 0
        label[mask.astype(bool)] = cls
    return image, label


def make_dataset(out_dir, img_size=128, num_train=200, num_val=40, seed=0):
    settings = dict(img_size=img_size, num_train=num_train, num_val=num_val,
                    seed=seed, classes={str(k): list(v) for k, v in
                                        OBJECT_CLASSES.items()},
                    shapes=list(SHAPES))
    done = osp.join(out_dir, 'settings.json')
    if is_written_with(done, settings):
        print(f'synthetic ADE20K-layout dataset ready in {out_dir}')
        return
    for split, prefix, count, split_seed in (
            ('training', 'ADE_train', num_train, seed),
            ('validation', 'ADE_val', num_val, seed + 1)):
        rng = np.random.default_rng(split_seed)
        for sub in ('images', 'annotations'):
            os.makedirs(osp.join(out_dir, sub, split), exist_ok=True)
        for i in range(1, count + 1):
            image, label = render(rng, img_size)
            name = f'{prefix}_{i:08d}'
            cv2.imwrite(osp.join(out_dir, 'images', split, name + '.jpg'),
                        image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(osp.join(out_dir, 'annotations', split, name + '.png'),
                        label)
    record_settings(done, settings)
    print(f'wrote {num_train} training and {num_val} validation images to '
          f'{out_dir}')


def main():
    args = parse_args()
    make_dataset(args.out_dir, args.img_size, args.num_train, args.num_val,
                 args.seed)


if __name__ == '__main__':
    main()
