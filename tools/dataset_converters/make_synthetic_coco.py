"""Write a small synthetic instance-segmentation dataset in COCO's layout.

    python tools/dataset_converters/make_synthetic_coco.py data/synthetic_coco

Layout (what mmdet's ``CocoDataset`` and ``CocoMetric`` read, like COCO 2017)::

    data/synthetic_coco/
        annotations/instances_train2017.json
        annotations/instances_val2017.json
        train2017/000000000001.jpg ...
        val2017/000000100001.jpg ...

Each image has a textured background and 1 to 4 non-overlapping objects.
The category of an object is decided by its shape and colour together (see
``OBJECT_CATEGORIES``); categories keep their COCO ids and names, so the
80-class COCO configs read the set as it is. Masks are COCO polygons, boxes
``[x, y, w, h]`` of the painted pixels. Re-running with the same arguments
reuses a complete dataset and writes nothing.
"""
import argparse
import json
import os
import os.path as osp

import cv2
import numpy as np

from mmvim.datasets import (SHAPE_COLOURS, is_written_with, paint,
                            record_settings, shape_mask, textured_background)

# COCO category id -> (name, shape, colour index, texture)
OBJECT_CATEGORIES = {
    1: ('person', 'circle', 0, 'flat'),
    3: ('car', 'square', 1, 'stripes'),
    62: ('chair', 'triangle', 2, 'dots'),
    64: ('potted plant', 'star', 5, 'flat'),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('out_dir', help='dataset root to write')
    parser.add_argument('--img-size', type=int, default=256)
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def mask_to_polygons(mask):
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` of a binary mask."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours
            if len(c) >= 3]


def render(rng, size, max_tries=20):
    """One image (BGR uint8) and its objects ``[(category_id, mask)]``."""
    image = textured_background(rng, size, size)
    occupied = np.zeros((size, size), np.uint8)
    objects = []
    ids = list(OBJECT_CATEGORIES)
    for _ in range(rng.integers(1, 5)):
        cat = ids[rng.integers(len(ids))]
        _, shape, colour_index, texture = OBJECT_CATEGORIES[cat]
        for _ in range(max_tries):
            radius = rng.uniform(0.08, 0.2) * size
            center = rng.uniform(radius, size - radius, 2)
            mask = shape_mask(shape, size, size, center, radius,
                              angle=rng.uniform(-0.4, 0.4))
            margin = cv2.dilate(mask, np.ones((5, 5), np.uint8))
            if not (margin & occupied).any():
                break
        else:
            continue  # no free place left for this object
        colour = np.clip(
            np.asarray(SHAPE_COLOURS[colour_index]) + rng.uniform(-25, 25, 3),
            0, 255)
        paint(image, mask, rng, colour=colour, texture=texture)
        occupied |= mask
        objects.append((cat, mask))
    return image, objects


def make_split(out_dir, split, count, size, rng, first_id):
    os.makedirs(osp.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    for image_id in range(first_id, first_id + count):
        image, objects = render(rng, size)
        file_name = f'{image_id:012d}.jpg'
        cv2.imwrite(osp.join(out_dir, split, file_name), image,
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=image_id, file_name=file_name, height=size,
                           width=size))
        for cat, mask in objects:
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append(dict(
                id=len(annotations) + first_id * 10,
                image_id=image_id,
                category_id=cat,
                segmentation=mask_to_polygons(mask),
                area=float(mask.sum()),
                bbox=[x0, y0, int(xs.max()) - x0 + 1,
                      int(ys.max()) - y0 + 1],
                iscrowd=0))
    categories = [dict(id=cat, name=name, supercategory='object')
                  for cat, (name, *_) in OBJECT_CATEGORIES.items()]
    return dict(info=dict(description='mmvim synthetic COCO-layout set'),
                licenses=[], images=images, annotations=annotations,
                categories=categories)


def make_dataset(out_dir, img_size=256, num_train=200, num_val=40, seed=0):
    settings = dict(img_size=img_size, num_train=num_train, num_val=num_val,
                    seed=seed, categories={str(k): list(v) for k, v in
                                           OBJECT_CATEGORIES.items()})
    done = osp.join(out_dir, 'annotations', 'settings.json')
    if is_written_with(done, settings):
        print(f'synthetic COCO-layout dataset ready in {out_dir}')
        return
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    for split, count, split_seed, first_id in (
            ('train2017', num_train, seed, 1),
            ('val2017', num_val, seed + 1, 100001)):
        coco = make_split(out_dir, split, count, img_size,
                          np.random.default_rng(split_seed), first_id)
        with open(osp.join(out_dir, 'annotations',
                           f'instances_{split}.json'), 'w') as f:
            json.dump(coco, f)
    record_settings(done, settings)
    print(f'wrote {num_train} training and {num_val} validation images to '
          f'{out_dir}')


def main():
    args = parse_args()
    make_dataset(args.out_dir, args.img_size, args.num_train, args.num_val,
                 args.seed)


if __name__ == '__main__':
    main()
