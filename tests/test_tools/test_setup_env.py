"""tools/setup_env.sh chooses the environment this machine needs: mmcv's CPU
ops, or its CUDA ops for the GPUs' architectures where a GPU and a matching
nvcc are. A fake nvidia-smi and a fake CUDA toolkit stand in for the GPU
machine; ``--plan`` prints the settings without building anything."""
import os
import os.path as osp
import stat
import subprocess

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(ROOT, 'tools', 'setup_env.sh')


def _executable(path, text):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


@pytest.fixture
def machine(tmp_path):
    """Build a fake machine: ``machine(gpus=['9.0'], nvcc='13.0')``."""

    def make(gpus=(), nvcc=None, **env):
        bin_dir = tmp_path / 'bin'
        bin_dir.mkdir(exist_ok=True)
        caps = '\n'.join(gpus)
        smi = bin_dir / 'nvidia-smi'
        if gpus:
            _executable(str(smi), f'#!/bin/sh\nprintf "%s\\n" "{caps}"\n')
        elif smi.exists():
            smi.unlink()
        base = {k: v for k, v in os.environ.items()
                if k not in ('CUDA_HOME', 'CUDA_PATH', 'TORCH_CUDA_ARCH_LIST',
                             'MMVIM_WITH_CUDA')}
        # no nvcc on PATH, and no /usr/local/cuda unless CUDA_HOME says so
        base['PATH'] = f'{bin_dir}:/usr/bin:/bin'
        base['MMVIM_DEFAULT_CUDA_HOME'] = str(tmp_path / 'no-cuda')
        if nvcc:
            home = tmp_path / 'cuda'
            _executable(str(home / 'bin' / 'nvcc'),
                        '#!/bin/sh\necho "Cuda compilation tools, release '
                        f'{nvcc}, V{nvcc}.88"\n')
            (home / 'include').mkdir(exist_ok=True)
            (home / 'include' / 'cuda_runtime.h').write_text('')
            base['CUDA_HOME'] = str(home)
        base.update(env)
        return base

    return make


def plan(env):
    result = subprocess.run(['bash', SCRIPT, '--plan'], capture_output=True,
                            text=True, env=env, cwd=ROOT)
    settings = {}
    for line in result.stdout.splitlines():
        if line.startswith('mmcv_build: '):
            key, value = line[len('mmcv_build: '):].split('=', 1)
            settings['mmcv.' + key] = value
        elif '=' in line:
            key, value = line.split('=', 1)
            settings[key] = value
    return result, settings


def test_cpu_machine_builds_cpu_ops(machine):
    result, s = plan(machine())
    assert result.returncode == 0, result.stderr
    assert s['kind'] == 'cpu' and s['mmcv.FORCE_CUDA'] == '0'
    assert 'mmcv.TORCH_CUDA_ARCH_LIST' not in s
    assert s['stamp'].endswith('-cpu')


def test_gpu_machine_builds_cuda_ops_for_its_gpus(machine, tmp_path):
    result, s = plan(machine(gpus=['9.0', '8.0', '9.0'], nvcc='13.0'))
    assert result.returncode == 0, result.stderr
    assert s['kind'] == 'cuda-8.0_9.0' and s['gpu_archs'] == '8.0;9.0'
    assert s['mmcv.FORCE_CUDA'] == '1' and s['mmcv.MMCV_WITH_OPS'] == '1'
    assert s['mmcv.TORCH_CUDA_ARCH_LIST'] == '8.0;9.0'
    assert s['mmcv.CUDA_HOME'] == str(tmp_path / 'cuda')
    assert s['nvcc_version'] == '13.0'
    # torch's pip-installed cuBLAS / cuSPARSE headers for ATen/cuda
    assert s['mmcv.CPATH'].split(':')[0].endswith('site-packages/nvidia/'
                                                   'cu13/include')
    assert s['mmcv.LIBRARY_PATH'].split(':')[0].endswith('nvidia/cu13/lib')
    # a CPU-built environment is not taken for this one
    assert s['stamp'].endswith('-cuda-8.0_9.0')


def test_arch_list_and_opt_out_are_respected(machine):
    _, s = plan(machine(gpus=['9.0'], nvcc='13.0',
                        TORCH_CUDA_ARCH_LIST='9.0+PTX'))
    assert s['mmcv.TORCH_CUDA_ARCH_LIST'] == '9.0+PTX'
    _, s = plan(machine(gpus=['9.0'], nvcc='13.0', MMVIM_WITH_CUDA='0'))
    assert s['kind'] == 'cpu'
    # forced without a GPU (building for a GPU machine elsewhere)
    _, s = plan(machine(nvcc='13.0', MMVIM_WITH_CUDA='1'))
    assert s['kind'] == 'cuda-8.0_9.0' and s['gpu_archs'] == 'none'


def test_gpu_without_nvcc_says_what_is_missing(machine):
    result, s = plan(machine(gpus=['9.0']))
    assert result.returncode == 0 and s['kind'] == 'cpu'
    assert 'a GPU is here but no nvcc' in result.stdout
    assert 'set CUDA_HOME to a CUDA 13.0 toolkit' in result.stdout
    result, _ = plan(machine(gpus=['9.0'], MMVIM_WITH_CUDA='1'))
    assert result.returncode != 0
    assert "mmcv's CUDA ops need nvcc: set CUDA_HOME" in result.stderr


def test_nvcc_of_another_cuda_major_is_refused(machine):
    result, _ = plan(machine(gpus=['9.0'], nvcc='12.4'))
    assert result.returncode != 0
    assert 'is CUDA 12.4 but torch is built with CUDA 13.0; set CUDA_HOME ' \
        'to a CUDA 13.x toolkit' in result.stderr
