"""What the command-line tools share: the runner arguments of
``tools/train.py`` and ``tools/test.py``, the config they build from them,
the JSON they write their results to, and how a user's mistake ends (its message alone, non-zero exit status;
tracebacks are for bugs)."""
import contextlib
import json
import os
import os.path as osp
import warnings

from mmengine.config import Config, DictAction

from .checkpoint_loading import CheckpointFileError


def add_runner_args(parser):
    """--work-dir, --cfg-options, --launcher, --local-rank."""
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, e.g. '
        'train_cfg.max_iters=100 optim_wrapper.optimizer.lr=1e-4')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def load_config(path, cfg_options=None):
    """The config file ``path`` with ``cfg_options`` (the dict of
    --cfg-options) merged in; a missing file is a user error."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {path} not found')
    cfg = Config.fromfile(path)
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    return cfg


def config_from_args(args):
    """The config of ``args.config`` with --cfg-options, --launcher and the
    work dir (--work-dir, the config's, or ./work_dirs/CONFIG_NAME)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def write_json(path, data):
    """Write a tool's results to ``path`` as indented JSON, creating its
    folder."""
    if osp.dirname(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f, indent=2)


def _user_errors():
    from mmvim.models.backbones.vim_checkpoint import VimCheckpointError
    return (FileNotFoundError, CheckpointFileError, VimCheckpointError)


@contextlib.contextmanager
def exit_on_user_error():
    """Turn the errors a user causes (a missing file or data root, a
    checkpoint that cannot be read or is not a fitting Vim) into
    ``error: <message>`` and exit status 1, without a traceback."""
    try:
        yield
    except _user_errors() as error:
        raise SystemExit(f'error: {error}') from None


# Third-party warnings the tools silence, each known and harmless here
# (message start, module that issues it, why). Nothing else is filtered.
KNOWN_WARNINGS = [
    (r'``build_loss`` would be deprecated soon', r'mmseg\.models\.builder',
     "mmseg's heads call mmseg's own deprecated builder"),
    (r'Default ``avg_non_ignore`` is False', r'mmseg|mmdet',
     "a notice in mmseg's / mmdet's CrossEntropyLoss about its default"),
    (r'`reduce_zero_label` will be deprecated',
     r'mmseg\.datasets\.transforms\.loading',
     "mmseg's LoadAnnotations notice; the ADE20K configs set it on the "
     'dataset'),
    (r'Failed to add <class .*LocalVisBackend',
     r'mmengine\.visualization\.visualizer',
     'the visualizer is built before the run has a log folder; the runner '
     'gives it one right after'),
    (r'The draw is False', r'mmseg\.engine\.hooks\.visualization_hook',
     "mmseg's default runtime has the (idle) visualization hook in training"),
    (r'Warning: The (bbox|polygon) is out of bounds',
     r'mmengine\.visualization\.visualizer',
     "an overlay of a barely trained model's boxes reaching past the image"),
    (r'To copy construct from a tensor',
     r'mmdet\.models\.roi_heads\.mask_heads\.fcn_mask_head',
     "torch's advice about a copy in mmdet's mask head"),
    (r'`isinstance\(treespec, LeafSpec\)` is deprecated', r'copyreg',
     "torch 2.11's own pytree code, printed by every ONNX export"),
]


def quiet_known_warnings():
    """Silence the third-party warnings of :data:`KNOWN_WARNINGS` (and only
    those) in a command-line tool, so that its output reads as its story."""
    for message, module, _ in KNOWN_WARNINGS:
        warnings.filterwarnings('ignore', message=message, module=module)
