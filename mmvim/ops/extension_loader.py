"""JIT build of mmvim's C++/CUDA ops with torch.utils.cpp_extension + ninja.

Sources live in ``<repo>/ops/<op>/csrc``. The build directory's name holds a
hash of the sources (headers included), flags and torch version, so an edited source or another
torch builds anew and an unchanged one is reused. The default location is
``~/.cache/mmvim/extensions``; ``MMVIM_EXTENSIONS_DIR`` overrides it. Several
processes starting together (DDP ranks) build once: the first takes a file
lock, the others wait for it and load the result.
"""
import fcntl
import glob
import logging
import hashlib
import os
import os.path as osp
import sys
import warnings

import torch

EXTENSIONS_DIR_ENV = 'MMVIM_EXTENSIONS_DIR'
OPS_SOURCE_DIR = osp.join(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'ops')

_loaded = {}


def _cpu_flags():
    """Compiler flags for this CPU; its feature list enters the hash."""
    # -fopenmp: at::parallel_for is an OpenMP region compiled in our unit
    flags = ['-O3', '-fopenmp']
    features = ''
    if os.uname().machine in ('x86_64', 'AMD64'):
        flags.append('-march=native')
        try:
            with open('/proc/cpuinfo') as f:
                features = next((line for line in f
                                 if line.startswith('flags')), '')
        except OSError:
            pass
    return flags, features


def extensions_dir():
    return os.environ.get(EXTENSIONS_DIR_ENV) or osp.join(
        osp.expanduser('~'), '.cache', 'mmvim', 'extensions')


def build_name(op, sources, flags, extra_key=''):
    digest = hashlib.sha1()
    for path in sources:
        with open(path, 'rb') as f:
            digest.update(f.read())
    digest.update(' '.join(flags).encode())
    digest.update(extra_key.encode())
    digest.update(torch.__version__.encode())
    digest.update(sys.version.encode())
    return f'mmvim_{op}_{digest.hexdigest()[:12]}'


def _ensure_ninja_on_path():
    # pip's ninja installs next to the interpreter, which a non-activated
    # virtual environment does not put on PATH
    bin_dir = osp.dirname(sys.executable)
    if osp.exists(osp.join(bin_dir, 'ninja')) and bin_dir not in \
            os.environ.get('PATH', '').split(os.pathsep):
        os.environ['PATH'] = bin_dir + os.pathsep + os.environ.get('PATH', '')


def load_extension(op, source_files, kind='cpu'):
    """Build (once) and import the extension ``op`` from ``ops/<op>/csrc``.

    Returns the module, or None with a one-line warning saying why it could
    not be built (the caller then falls back to the reference).
    """
    key = (op, kind)
    if key in _loaded:
        return _loaded[key]
    module = None
    try:
        module = _build(op, source_files, kind)
    except Exception as error:  # noqa: BLE001  (any build failure falls back)
        reason = str(error).strip().splitlines()
        reason = reason[-1] if reason else type(error).__name__
        warnings.warn(f'mmvim: could not build the {kind} {op} kernel '
                      f'({reason}); using the pure-PyTorch reference '
                      'instead', RuntimeWarning, stacklevel=2)
    _loaded[key] = module
    return module


def _build(op, source_files, kind):
    if not os.environ.get('CUDA_HOME') and osp.isdir('/usr/local/cuda'):
        # nvcc's own guess (/usr/local) cannot link libcudart
        os.environ['CUDA_HOME'] = '/usr/local/cuda'
    # quiet torch's import-time notice that this machine has no CUDA runtime
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    csrc = osp.join(OPS_SOURCE_DIR, op, 'csrc')
    sources = [osp.join(csrc, name) for name in source_files]
    missing = [s for s in sources if not osp.isfile(s)]
    if missing:
        raise FileNotFoundError(
            f'missing sources {missing}: the kernels compile from the '
            'checkout, so install mmvim with `pip install -e .` from it')
    cflags, features = _cpu_flags()
    cuda_flags = []
    if kind == 'cuda':
        cflags = ['-O3']
        cuda_flags = ['-O3', '--use_fast_math', '-std=c++17']
        if not os.environ.get('TORCH_CUDA_ARCH_LIST') and \
                not torch.cuda.is_available():
            # no GPU to ask: build for the A100 / H100 generations
            os.environ['TORCH_CUDA_ARCH_LIST'] = '8.0;9.0'
        features = os.environ.get('TORCH_CUDA_ARCH_LIST') or ';'.join(
            '{}.{}'.format(*torch.cuda.get_device_capability(i))
            for i in range(torch.cuda.device_count()))
    headers = sorted(glob.glob(osp.join(csrc, '*.h')) +
                     glob.glob(osp.join(csrc, '*.cuh')))
    name = build_name(op + '_' + kind, sources + headers, cflags + cuda_flags,
                      features)
    build_dir = osp.join(extensions_dir(), name)
    os.makedirs(build_dir, exist_ok=True)
    _ensure_ninja_on_path()
    if kind == 'cuda' and os.environ.get('CUDA_HOME'):
        cpp_extension.CUDA_HOME = os.environ['CUDA_HOME']
    library = osp.join(build_dir, name + '.so')
    with open(osp.join(build_dir, 'build.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other ranks wait here
        try:
            if not osp.exists(library):
                print(f'mmvim: building the {kind} {op} kernel in {build_dir} '
                      '(first use only, this may take a minute)',
                      file=sys.stderr, flush=True)
            return cpp_extension.load(
                name=name,
                sources=sources,
                extra_cflags=cflags,
                extra_cuda_cflags=cuda_flags,
                extra_ldflags=['-fopenmp'] if kind == 'cpu' else [],
                build_directory=build_dir,
                with_cuda=kind == 'cuda',
                verbose=False)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
