"""Run a trained model on one image and save the prediction overlaid on it.

    python tools/demo/image_demo.py IMG CONFIG CHECKPOINT --out-file OUT.png

The config's ``default_scope`` decides the task: segmentation (mmseg) draws
the class map over the image, detection (mmdet) draws the boxes and masks
scoring at least ``--score-thr``, classification (mmpretrain) writes the
top class and score on it.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config

import mmvim  # noqa: F401  (registers the Vim modules, safe checkpoint loading)


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
    return parser.parse_args()


def segmentation_demo(args, cfg):
    from mmseg.apis import inference_model, init_model, show_result_pyplot
    model = init_model(cfg, args.checkpoint, device=args.device)
    result = inference_model(model, args.img)
    show_result_pyplot(model, args.img, result, opacity=args.opacity,
                       draw_gt=False, show=False, out_file=args.out_file,
                       with_labels=False)
    return result.pred_sem_seg.data


def detection_demo(args, cfg):
    import mmcv
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS
    model = init_detector(cfg, args.checkpoint, device=args.device)
    result = inference_detector(model, args.img)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample(
        'result', mmcv.imread(args.img, channel_order='rgb'), result,
        draw_gt=False, show=False, pred_score_thr=args.score_thr,
        out_file=args.out_file)
    return result.pred_instances


def classification_demo(args, cfg):
    import cv2
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(
        cfg, pretrained=args.checkpoint, device=args.device)
    result = inferencer(args.img)[0]
    image = cv2.imread(args.img)
    text = f"{result['pred_class']} {result['pred_score']:.2f}"
    cv2.putText(image, text, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (255, 255, 255), 1, cv2.LINE_AA)
    cv2.imwrite(args.out_file, image)
    return result


def main():
    args = parse_args()
    for path in (args.img, args.config, args.checkpoint):
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
