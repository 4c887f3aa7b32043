"""tools/slurm_train.sh and tools/slurm_test.sh under a real Slurm.

The module fixture brings up a one-node cluster on this machine: Debian's
``slurm-wlm`` and ``munge`` (installed by tools/run_tests.sh, the README's
test command; missing, they fail the tests on CI and skip them elsewhere,
with the reason), a fresh munge key and ``munged``, a generated
``slurm.conf`` (free ports, state in a temporary folder, no cgroups), and
``slurmctld`` + ``slurmd``, all stopped again after the tests. Two srun
tasks then train the small classifier with ``--launcher slurm``."""
import glob
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import time

import pytest

from small_runs import (ROOT, free_port, options, probe_env,
                        tiny_classifier_config)

PACKAGES = ['slurm-wlm', 'munge']
PARTITION = 'debug'


def _missing():
    """None once slurmctld, slurmd, srun and munged are there (the README's
    test command, tools/run_tests.sh, installs them), else what is missing.
    """
    needed = ('slurmctld', 'slurmd', 'srun', 'munged')
    missing = [tool for tool in needed if not shutil.which(tool)]
    if not missing:
        return None
    return (f'{", ".join(missing)} not found: tools/run_tests.sh installs '
            f'{" and ".join(PACKAGES)} with apt-get as root')


SLURM_CONF = """\
ClusterName=mmvimtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
NodeName=localhost CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """munged, slurmctld and slurmd of a one-node cluster in ``folder``."""

    def __init__(self, folder):
        self.folder = folder
        self.conf = osp.join(folder, 'slurm.conf')
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.daemons = []

    def _start(self, *command):
        log = open(osp.join(self.folder, f'{osp.basename(command[0])}.out'),
                   'w')
        self.daemons.append(subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def start(self):
        for sub in ('state', 'spool'):
            os.makedirs(osp.join(self.folder, sub))
        key = osp.join(self.folder, 'munge.key')
        with open(key, 'wb') as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        self._start('munged', '--foreground', '--force', f'--key-file={key}',
                    f'--socket={self.folder}/munge.socket',
                    f'--pid-file={self.folder}/munged.pid',
                    f'--log-file={self.folder}/munged.log',
                    f'--seed-file={self.folder}/munged.seed')
        self._wait(lambda: osp.exists(f'{self.folder}/munge.socket'),
                   'munged to open its socket')
        with open(self.conf, 'w') as f:
            f.write(SLURM_CONF.format(
                folder=self.folder, ctld_port=free_port(),
                slurmd_port=free_port(), cpus=max(2, os.cpu_count()),
                partition=PARTITION))
        self._start('slurmctld', '-D', '-f', self.conf)
        self._start('slurmd', '-D', '-f', self.conf, '-N', 'localhost')
        self._wait(lambda: self.run('sinfo', '-h', '-N', '-o', '%T')
                   .stdout.strip() == 'idle', 'the node to be idle in sinfo')
        return self

    def _wait(self, ready, what, timeout=60):
        deadline = time.time() + timeout
        while not ready():
            dead = [p.args[0] for p in self.daemons if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(
                    f'waited for {what}; exited: {dead}\n' + self.logs())
            time.sleep(0.5)

    def run(self, *command, **kwargs):
        return subprocess.run(command, env=self.env, capture_output=True,
                              text=True, **kwargs)

    def logs(self):
        return '\n'.join(f'--- {path}\n{open(path).read()[-2000:]}'
                         for path in sorted(glob.glob(f'{self.folder}/*.*'))
                         if path.endswith(('.log', '.out')))

    def stop(self):
        self.run('scancel', '--user', 'root', '--full')
        for daemon in reversed(self.daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
    why_not = _missing()
    if why_not and os.environ.get('CI') == 'true':
        pytest.fail(f'no Slurm on CI: {why_not}')
    if why_not:
        pytest.skip(f'no Slurm: {why_not}')
    cluster = SlurmCluster(str(tmp_path_factory.mktemp('slurm')))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _script(cluster, name, *args, timeout=600):
    env = probe_env(**cluster.env, PYTHON=sys.executable, GPUS='2',
                    GPUS_PER_NODE='2', CPUS_PER_TASK='1', GRES='')
    return subprocess.run(['bash', osp.join(ROOT, 'tools', name), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


def test_slurm_train_and_test_with_two_tasks(slurm, synthetic_in1k,
                                             tmp_path):
    version = slurm.run('sinfo', '--version').stdout.strip()
    config = tiny_classifier_config(
        tmp_path / 'small.py',
        "custom_hooks = [dict(type='RankRecordHook')]\n")
    work_dir = str(tmp_path / 'work')
    start = time.time()
    train = _script(slurm, 'slurm_train.sh', PARTITION, 'mmvim-train',
                    config, work_dir, *options(synthetic_in1k, 2))
    assert train.returncode == 0, \
        train.stdout[-2000:] + train.stderr[-3000:] + slurm.logs()
    log = train.stdout + train.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert 'rank 0, world size 2, launcher slurm' in log
    records = [json.load(open(osp.join(work_dir, 'ranks', f'rank{r}.json')))
               for r in range(2)]
    # both srun tasks of one job joined one gloo group and trained 2 steps
    assert [(r['rank'], r['world_size'], r['backend']) for r in records] == \
        [(0, 2, 'gloo'), (1, 2, 'gloo')]
    assert records[0]['slurm_job'] == records[1]['slurm_job'] is not None
    assert all(len(r['batches']) == 2 for r in records)
    for step in range(2):  # each rank its own images, one set of weights
        assert not set(records[0]['batches'][step]) & set(
            records[1]['batches'][step])
    assert records[0]['weights'] == records[1]['weights']
    ckpt = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(ckpt)
    assert glob.glob(osp.join(work_dir, '*', '*.log'))
    print(f'{version}: slurm_train.sh, 2 tasks, world size 2, '
          f'{time.time() - start:.1f} s')

    test = _script(slurm, 'slurm_test.sh', PARTITION, 'mmvim-test', config,
                   ckpt, '--work-dir', str(tmp_path / 'test'),
                   *options(synthetic_in1k, 2))
    assert test.returncode == 0, test.stderr[-3000:]
    assert re.search(r"'accuracy/top1': [0-9.]+", test.stdout)
