"""JIT build of mmvim's C++/CUDA ops with torch.utils.cpp_extension + ninja.

Sources live in ``ops/<op>/csrc``: next to the package in a checkout,
``mmvim/.mim/ops`` in an installed package (see
:func:`find_ops_source_dir`). Three kinds of build:

- ``cpu``: the C++ sources of the CPU kernel, with OpenMP, for this CPU
  (``-march=native`` on x86-64; ``MMVIM_CPU_ARCH`` names another
  ``-march`` target, e.g. ``x86-64-v3`` for a cluster whose nodes lack
  AVX-512);
- ``cuda``: the CUDA sources with nvcc, for the visible GPU's architecture
  (``TORCH_CUDA_ARCH_LIST`` overrides it; ``8.0;9.0+PTX`` without a GPU);
- ``simt``: the same CUDA sources with the host C++ compiler and
  ``MMVIM_SIMT_EMULATION``, so the CUDA kernels run on the CPU under
  ``simt_emulation.h`` (how CI checks them without a GPU).

The build directory's name holds a hash of the sources (headers included),
flags and torch version, so an edited source or another torch builds anew
and an unchanged one is reused. The default location is
``~/.cache/mmvim/extensions``; ``MMVIM_EXTENSIONS_DIR`` overrides it. Several
processes starting together (DDP ranks) build once: the first takes a file
lock, the others wait for it and load the result.

Nothing here changes the process's environment: the CUDA toolkit and the
architectures are handed to the build explicitly.
"""
import contextlib
import fcntl
import glob
import hashlib
import logging
import os
import os.path as osp
import shutil
import sys
import warnings

import torch

EXTENSIONS_DIR_ENV = 'MMVIM_EXTENSIONS_DIR'
# MMVIM_SIMT_SANITIZE=address builds the emulated kernels with
# AddressSanitizer (the process must preload libasan; see the tests)
SANITIZE_ENV = 'MMVIM_SIMT_SANITIZE'
# MMVIM_CPU_ARCH: the CPU kernel's -march target instead of native
CPU_ARCH_ENV = 'MMVIM_CPU_ARCH'


def find_ops_source_dir(package_dir):
    """The folder holding the ops' C++/CUDA sources (``<op>/csrc``) for
    the mmvim package at ``package_dir``.

    An installed package (``pip install .`` or a wheel) carries them in
    ``<package_dir>/.mim/ops`` (setup.py copies them there); a source
    checkout, installed editable or not, has them in ``ops/`` beside the
    package. The first of the two that exists, else the checkout's path
    (the build then names the missing sources).
    """
    installed = osp.join(package_dir, '.mim', 'ops')
    checkout = osp.join(osp.dirname(package_dir), 'ops')
    return installed if osp.isdir(installed) else checkout


OPS_SOURCE_DIR = find_ops_source_dir(
    osp.dirname(osp.dirname(osp.abspath(__file__))))
# without a GPU to ask: the A100 and H100 generations, and PTX that newer
# GPUs compile at load time
DEFAULT_CUDA_ARCHS = '8.0;9.0+PTX'
KINDS = ('cpu', 'cuda', 'simt')

_loaded = {}


class ExtensionBuildError(RuntimeError):
    """A kernel could not be compiled or imported."""


def _cpu_flags():
    """Compiler flags for this CPU; its feature list enters the hash."""
    # -fopenmp: at::parallel_for is an OpenMP region compiled in our unit
    flags = ['-O3', '-fopenmp']
    features = ''
    arch = os.environ.get(CPU_ARCH_ENV, '').strip()
    if arch:
        flags.append(f'-march={arch}')
    elif os.uname().machine in ('x86_64', 'AMD64'):
        flags.append('-march=native')
        try:
            with open('/proc/cpuinfo') as f:
                features = next((line for line in f
                                 if line.startswith('flags')), '')
        except OSError:
            pass
    return flags, features


def cuda_home():
    """The CUDA toolkit to build with: $CUDA_HOME / $CUDA_PATH, the toolkit
    of the nvcc on PATH, or /usr/local/cuda; None without nvcc."""
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH')]
    nvcc = shutil.which('nvcc')
    if nvcc:
        candidates.append(osp.dirname(osp.dirname(osp.realpath(nvcc))))
    candidates.append('/usr/local/cuda')
    for home in candidates:
        if home and osp.isfile(osp.join(home, 'bin', 'nvcc')):
            return home
    return None


def cuda_arch_list():
    """``TORCH_CUDA_ARCH_LIST``, else the visible GPUs' architectures, else
    ``8.0;9.0+PTX``, as a list such as ['8.0', '9.0+PTX']."""
    requested = os.environ.get('TORCH_CUDA_ARCH_LIST', '').strip()
    if requested:
        return requested.replace(' ', ';').split(';')
    if torch.cuda.is_available():
        return sorted({'{}.{}'.format(*torch.cuda.get_device_capability(i))
                       for i in range(torch.cuda.device_count())})
    return DEFAULT_CUDA_ARCHS.split(';')


def gencode_flags(archs):
    """nvcc -gencode flags of arch strings such as '9.0' or '9.0+PTX'."""
    flags = []
    for arch in archs:
        number = arch.split('+')[0].replace('.', '')
        flags.append(f'-gencode=arch=compute_{number},code=sm_{number}')
        if arch.endswith('+PTX'):
            flags.append(
                f'-gencode=arch=compute_{number},code=compute_{number}')
    return flags


def build_flags(kind):
    """(C++ flags, CUDA flags, extra hash key) of a build of ``kind``."""
    if kind == 'cpu':
        cflags, features = _cpu_flags()
        return cflags, [], features
    if kind == 'cuda':
        archs = cuda_arch_list()
        return ['-O3'], ['-O3', '--use_fast_math', '-std=c++17'] + \
            gencode_flags(archs), ';'.join(archs)
    if kind == 'simt':
        # -x c++: the .cu files are host C++ here; C++20 for source_location
        cflags = ['-O2', '-std=c++20', '-x', 'c++', '-DMMVIM_SIMT_EMULATION']
        sanitize = os.environ.get(SANITIZE_ENV, '').strip()
        if sanitize:
            if sanitize != 'address':
                raise ValueError(f'{SANITIZE_ENV}={sanitize!r}: only '
                                 "'address' is supported")
            cflags = [f for f in cflags if f != '-O2'] + [
                '-O1', '-fsanitize=address', '-fno-omit-frame-pointer']
        return cflags, [], sanitize
    raise ValueError(f'unknown kernel kind {kind!r}, choose from {KINDS}')


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


def compiler_available(kind):
    """Whether the compiler a build of ``kind`` needs is installed."""
    if kind == 'cuda':
        return cuda_home() is not None
    return shutil.which(os.environ.get('CXX', 'c++')) is not None


def cpp_extension_quiet():
    """torch.utils.cpp_extension, imported without the notice its import
    logs on a machine with no CUDA runtime (true, and no concern of ours);
    the logger's level is restored afterwards."""
    log = logging.getLogger('torch.utils.cpp_extension')
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


@contextlib.contextmanager
def _cpp_extension(kind):
    """torch.utils.cpp_extension, pointed at our CUDA toolkit for the
    duration of a build only."""
    cpp_extension = cpp_extension_quiet()
    saved = cpp_extension.CUDA_HOME
    if kind == 'cuda':
        cpp_extension.CUDA_HOME = cuda_home()
    try:
        yield cpp_extension
    finally:
        cpp_extension.CUDA_HOME = saved


def _with_ninja_on_path():
    """PATH with the interpreter's bin folder (pip's ninja installs there,
    which a non-activated virtual environment does not put on PATH)."""
    path = os.environ.get('PATH', '')
    bin_dir = osp.dirname(sys.executable)
    if osp.exists(osp.join(bin_dir, 'ninja')) and \
            bin_dir not in path.split(os.pathsep):
        path = bin_dir + os.pathsep + path
    return path


@contextlib.contextmanager
def _environ(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_extension(op, source_files, kind='cpu', csrc=None):
    """Build (once per process) and import the extension ``op`` of ``kind``
    from ``csrc`` (default ``ops/<op>/csrc``); raises ExtensionBuildError
    saying why not. The headers of ``ops/*/csrc`` are on the include path.
    """
    csrc = csrc or osp.join(OPS_SOURCE_DIR, op, 'csrc')
    key = (op, kind, csrc, os.environ.get(SANITIZE_ENV, '')
           if kind == 'simt' else '')
    if key not in _loaded:
        try:
            _loaded[key] = _build(op, source_files, kind, csrc)
        except Exception as error:  # noqa: BLE001  (kept, re-raised below)
            _loaded[key] = error
    result = _loaded[key]
    if isinstance(result, Exception):
        raise ExtensionBuildError(
            f'could not build the {kind} {op} kernel: {_reason(result)}') \
            from result
    return result


def load_extension(op, source_files, kind='cpu', csrc=None):
    """Like :func:`build_extension`, but returns None with a one-line
    warning instead of raising (the caller then falls back)."""
    try:
        return build_extension(op, source_files, kind, csrc)
    except ExtensionBuildError as error:
        warnings.warn(f'mmvim: {error}; using the pure-PyTorch reference '
                      'instead', RuntimeWarning, stacklevel=2)
        return None


def _reason(error):
    """The line of a build failure that says what went wrong: the
    compiler's first diagnostic, a missing program, or the last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for marker in ('error:', 'not found', 'No such file'):
        hits = [line for line in lines
                if marker in line and ' -o ' not in line]
        if hits:
            return hits[0]
    return lines[-1] if lines else type(error).__name__


def _remove_stale_baton(build_dir):
    """Delete torch's own build lock (``lock``) left in ``build_dir`` by
    an interrupted build. torch waits forever while that file exists; under
    our flock no other process can be building here, so it is stale."""
    baton = osp.join(build_dir, 'lock')
    if osp.exists(baton):
        print(f'mmvim: removing the stale build lock {baton} of an '
              'interrupted build', file=sys.stderr, flush=True)
        os.remove(baton)


def _build(op, source_files, kind, csrc):
    sources = [osp.join(csrc, name) for name in source_files]
    missing = [s for s in sources if not osp.isfile(s)]
    if missing:
        raise FileNotFoundError(
            f'missing sources {missing}: the kernels compile from the '
            'sources shipped with mmvim (a checkout\'s ops/, or mmvim/.mim/'
            'ops in an installed package); reinstall mmvim with `pip install '
            '.` or `pip install -e .` from a checkout')
    if kind == 'cuda' and cuda_home() is None:
        raise FileNotFoundError(
            'nvcc not found (no CUDA toolkit in $CUDA_HOME, on PATH or in '
            '/usr/local/cuda)')
    cflags, cuda_flags, key = build_flags(kind)
    include_dirs = sorted(glob.glob(osp.join(OPS_SOURCE_DIR, '*', 'csrc')))
    headers = sorted(path for folder in {csrc, *include_dirs}
                     for pattern in ('*.h', '*.cuh')
                     for path in glob.glob(osp.join(folder, pattern)))
    name = build_name(op + '_' + kind, sources + headers, cflags + cuda_flags,
                      key)
    build_dir = osp.join(extensions_dir(), name)
    os.makedirs(build_dir, exist_ok=True)
    ldflags = {'cpu': ['-fopenmp'], 'cuda': [],
               'simt': [f for f in cflags if f.startswith('-fsanitize')]}
    library = osp.join(build_dir, name + '.so')
    with open(osp.join(build_dir, 'build.lock'), 'w') as lock, \
            _cpp_extension(kind) as cpp_extension, \
            _environ(PATH=_with_ninja_on_path()):
        fcntl.flock(lock, fcntl.LOCK_EX)  # other ranks wait here
        try:
            _remove_stale_baton(build_dir)
            if not osp.exists(library):
                print(f'mmvim: building the {kind} {op} kernel in {build_dir} '
                      '(first use only, this may take a minute)',
                      file=sys.stderr, flush=True)
            return cpp_extension.load(
                name=name,
                sources=sources,
                extra_cflags=cflags,
                extra_cuda_cflags=cuda_flags,
                extra_ldflags=ldflags[kind],
                extra_include_paths=include_dirs,
                build_directory=build_dir,
                with_cuda=kind == 'cuda',
                verbose=False)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
