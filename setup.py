"""Install mmvim into an OpenMMLab 2.0 environment.

    pip install .          # a regular install (what mim works with)
    pip install -e .       # editable, from a checkout
    pip wheel .            # a wheel

The pinned environment (torch, mmcv built from source, mmseg/mmdet/mmpretrain)
is created by ``bash tools/setup_env.sh``; see README.md.

A regular install or a wheel carries what OpenMMLab packages keep in
``<package>/.mim``: ``configs/``, ``tools/``, ``model-index.yml`` and the
C++/CUDA sources of the ops (``ops/``), which the scan kernels are compiled
from on first use (``mmvim/ops/extension_loader.py`` finds them there). mim
looks for exactly these files: ``mim search mmvim`` reads
``mmvim/.mim/model-index.yml``, ``mim train mmvim CONFIG`` runs
``mmvim/.mim/tools/train.py`` on the config found under
``mmvim/.mim/configs``. An editable install reads all of them from the
checkout instead.
"""
import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = osp.dirname(osp.abspath(__file__))
# what goes into mmvim/.mim, relative to the repository root
MIM_FILES = ('configs', 'tools', 'ops', 'model-index.yml')
# kept out of the copies: bytecode and anything a build left behind
MIM_IGNORE = shutil.ignore_patterns('__pycache__', '*.py[cod]', '*.so', '*.o',
                                    'build')


def get_version():
    ns = {}
    with open(osp.join(ROOT, 'mmvim', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


def copy_mim_files(src_root, package_dir):
    """Copy ``MIM_FILES`` from ``src_root`` into ``package_dir/.mim``
    (replacing what a previous build left there); returns the copied
    file paths."""
    mim_dir = osp.join(package_dir, '.mim')
    if osp.isdir(mim_dir):
        shutil.rmtree(mim_dir)
    os.makedirs(mim_dir)
    for name in MIM_FILES:
        src = osp.join(src_root, name)
        if not osp.exists(src):
            raise FileNotFoundError(
                f'{src} is missing: mmvim packages {", ".join(MIM_FILES)} '
                'from the repository root (is MANIFEST.in complete?)')
        dst = osp.join(mim_dir, name)
        if osp.isdir(src):
            shutil.copytree(src, dst, ignore=MIM_IGNORE)
        else:
            shutil.copyfile(src, dst)
    return sorted(
        osp.join(folder, name) for folder, _, names in os.walk(mim_dir)
        for name in names)


class BuildPyWithMim(build_py):
    """``build_py`` that also copies the mim files into the built package
    (wheels and ``pip install .``; an editable install skips this copy and
    reads the checkout)."""

    def run(self):
        super().run()
        if not self.editable_mode:
            self._mim_outputs = copy_mim_files(
                ROOT, osp.join(self.build_lib, 'mmvim'))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + \
            getattr(self, '_mim_outputs', [])


setup(
    name='mmvim',
    version=get_version(),
    description='Vision Mamba (Vim) backbones for OpenMMLab 2.0 '
    '(mmpretrain, mmsegmentation, mmdetection)',
    long_description=open(osp.join(ROOT, 'README.md')).read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(include=('mmvim', 'mmvim.*')),
    cmdclass={'build_py': BuildPyWithMim},
    # ninja: the scan kernels are compiled on first use
    install_requires=['torch>=2.0', 'mmengine>=0.10.0', 'numpy', 'ninja'],
    extras_require={
        'seg': ['mmcv>=2.0.0,<2.2.0', 'mmsegmentation>=1.2.0', 'ftfy',
                'regex'],
        'det': ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.3.0'],
        'cls': ['mmcv>=2.0.0,<2.2.0', 'mmpretrain>=1.2.0'],
        'tests': ['pytest'],
        'mim': ['openmim'],
    },
    zip_safe=False,
)
