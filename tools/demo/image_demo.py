"""Run a trained model on one image and save the prediction beside it.

    python tools/demo/image_demo.py IMG CONFIG CHECKPOINT --out-file OUT.png
        [--gt LABEL_MAP.png]

The config's ``default_scope`` decides the task: segmentation (mmseg) draws
the class map over the image (and the ground truth of ``--gt``), detection
(mmdet) draws the boxes and masks scoring at least ``--score-thr``,
classification (mmpretrain) writes the top class and score. The panels
(input, prediction, ground truth) are written side by side, titled, and
enlarged (nearest neighbour) to at least ``--min-size`` pixels, so that
the small demo images are readable.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config

import mmvim  # noqa: F401  (registers the Vim modules, safe checkpoint loading)
from mmvim.engine import quiet_known_warnings


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', required=True, help='output image')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the segmentation overlay, (0, 1]')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections scoring below it are not drawn')
    parser.add_argument('--gt', help='segmentation: the label map (png) of '
                        'IMG, drawn as a third panel')
    parser.add_argument('--min-size', type=int, default=384,
                        help='panels are enlarged to at least this many '
                        'pixels on their short side')
    return parser.parse_args()


def side_by_side(panels, min_size):
    """RGB uint8 panels [(title, image)] -> one RGB image: each panel
    enlarged by an integer factor (nearest) to >= min_size on its short
    side, a title bar above it, 8 pixels between panels."""
    import cv2
    import numpy as np
    short = min(min(img.shape[:2]) for _, img in panels)
    factor = max(1, -(-min_size // short))
    tiles = []
    for title, img in panels:
        big = cv2.resize(img, (img.shape[1] * factor, img.shape[0] * factor),
                         interpolation=cv2.INTER_NEAREST)
        bar = np.full((28, big.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([bar, big], axis=0))
    height = max(t.shape[0] for t in tiles)
    gap = np.full((height, 8, 3), 255, np.uint8)
    row = []
    for tile in tiles:
        pad = np.full((height - tile.shape[0], tile.shape[1], 3), 255,
                      np.uint8)
        row += [np.concatenate([tile, pad], axis=0), gap]
    return np.concatenate(row[:-1], axis=1)


def _write_rgb(path, image):
    import cv2
    cv2.imwrite(path, image[..., ::-1])


def _label_overlay(image, labels, palette, opacity, ignore_index=255):
    import numpy as np
    colors = np.zeros((256, 3), np.uint8)
    colors[:len(palette)] = np.asarray(palette, np.uint8)
    painted = colors[labels]
    mixed = (1 - opacity) * image + opacity * painted
    keep = (labels == ignore_index)[..., None]
    return np.where(keep, image, mixed).astype(np.uint8)


def _reduce_zero_label(cfg):
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get(
        'pipeline', [])
    return any(step.get('type') == 'LoadAnnotations'
               and step.get('reduce_zero_label', False) for step in pipeline)


def segmentation_demo(args, cfg):
    import mmcv
    from mmseg.apis import inference_model, init_model
    model = init_model(cfg, args.checkpoint, device=args.device)
    result = inference_model(model, args.img)
    image = mmcv.imread(args.img, channel_order='rgb')
    palette = model.dataset_meta['palette']
    pred = result.pred_sem_seg.data[0].cpu().numpy()
    panels = [('input', image),
              ('prediction', _label_overlay(image, pred, palette,
                                            args.opacity))]
    if args.gt:
        gt = mmcv.imread(args.gt, flag='unchanged')
        if _reduce_zero_label(cfg):  # as the config's pipeline loads it
            gt = gt.astype('int64') - 1
            gt[gt == -1] = 255
        panels.append(('ground truth', _label_overlay(
            image, gt.astype('uint8'), palette, args.opacity)))
    _write_rgb(args.out_file, side_by_side(panels, args.min_size))
    return result.pred_sem_seg.data


def detection_demo(args, cfg):
    import mmcv
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS
    model = init_detector(cfg, args.checkpoint, device=args.device)
    result = inference_detector(model, args.img)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    image = mmcv.imread(args.img, channel_order='rgb')
    visualizer.add_datasample(
        'result', image, result, draw_gt=False, show=False,
        pred_score_thr=args.score_thr)
    panels = [('input', image),
              (f'prediction (score >= {args.score_thr})',
               visualizer.get_image())]
    _write_rgb(args.out_file, side_by_side(panels, args.min_size))
    return result.pred_instances


def classification_demo(args, cfg):
    import mmcv
    import numpy as np
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(
        cfg, pretrained=args.checkpoint, device=args.device)
    result = inferencer(args.img)[0]
    image = mmcv.imread(args.img, channel_order='rgb')
    text = f"{result['pred_class']} {result['pred_score']:.2f}"
    _write_rgb(args.out_file, side_by_side(
        [(f'prediction: {text}', np.ascontiguousarray(image))],
        args.min_size))
    return result


def main():
    args = parse_args()
    quiet_known_warnings()
    for path in (args.img, args.config, args.checkpoint) + (
            (args.gt, ) if args.gt else ()):
        if not osp.isfile(path):
            raise SystemExit(f'error: {path} not found')
    cfg = Config.fromfile(args.config)
    if osp.dirname(args.out_file):
        os.makedirs(osp.dirname(args.out_file), exist_ok=True)
    scope = cfg.get('default_scope')
    demos = {'mmseg': segmentation_demo, 'mmdet': detection_demo,
             'mmpretrain': classification_demo}
    if scope not in demos:
        raise SystemExit(f'error: image_demo.py supports default_scope '
                         f"{sorted(demos)}, not {scope!r}")
    demos[scope](args, cfg)
    print(f'wrote {args.out_file}')


if __name__ == '__main__':
    main()
