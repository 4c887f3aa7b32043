"""Install mmvim: ``pip install -e .`` inside an OpenMMLab 2.0 environment.

The pinned environment (torch, mmcv built from source, mmseg/mmdet/mmpretrain)
is created by ``bash tools/setup_env.sh``; see README.md.
"""
import os.path as osp

from setuptools import find_packages, setup


def get_version():
    ns = {}
    with open(osp.join(osp.dirname(__file__), 'mmvim', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


setup(
    name='mmvim',
    version=get_version(),
    description='Vision Mamba (Vim) backbones for OpenMMLab 2.0 '
    '(mmpretrain, mmsegmentation, mmdetection)',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'ops')),
    # the C++/CUDA sources of the scan are JIT-compiled on first use
    package_data={},
    include_package_data=True,
    install_requires=['torch>=2.0', 'mmengine>=0.10.0', 'numpy'],
    extras_require={
        'seg': ['mmcv>=2.0.0,<2.2.0', 'mmsegmentation>=1.2.0', 'ftfy', 'regex'],
        'det': ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.3.0'],
        'cls': ['mmcv>=2.0.0,<2.2.0', 'mmpretrain>=1.2.0'],
        'tests': ['pytest', 'ninja'],
    },
    zip_safe=False,
)
