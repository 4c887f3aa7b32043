"""Validate and benchmark mmvim on a borrowed GPU in one prepared run.

    python3 tools/analysis_tools/gpu_check.py OUT_DIR [--quick] [--dry-run]
        [--budget SECONDS]

``tools/gpu_check.sh`` is the wrapper to call (its header says what must
travel with the working tree). Six stages, each in a process of its own
(a CUDA error in one cannot poison the next) and each with a time cap:

0. env         install the carried wheels (``.whl/``) into a scratch folder,
               print GPU, driver, torch, CUDA, nvcc, import mmvim;
1. build       compile the CUDA scan kernel for the GPU (timed) and, beside
               it, the builds the tests use (simt kernel, probes);
2. tests       ``tests/test_ops/test_selective_scan_cuda.py`` and
               ``test_simt_emulation.py`` on the device (JUnit XML counts);
3. scan        ``benchmark_scan.py``: fused kernel, flip composition and the
               reference, bandwidth against the bytes each call must move;
4. efficiency  ``benchmark_efficiency.py``'s measurements, Vim-Ti/S against
               DeiT-Ti/S (timm's where mmpretrain is missing), eager and SDPA,
               run in priority order (the paper's 1248 comparison first);
5. amp         one bfloat16-autocast training step of Vim-Ti at 1024x1024.

The run as a whole has a budget (480 s, ``--quick`` 180 s, ``--dry-run``
100 s); a stage gets at most its cap and never more than what is left
after keeping the least that each later stage needs. A stage that would get
less than its own least is skipped with the reason; one that reaches its
cap is stopped, keeps what it measured and says so. Nothing is skipped
silently. ``--dry-run`` runs every stage on the CPU on tiny shapes (the
simt build, a few emulated kernel tests, tiny benchmarks), to rehearse the
machinery where there is no GPU.

OUT_DIR receives at most these files: gpu_check.json (every stage's status,
reason or error, times and key numbers; the paper's targets at 1248 marked
met / not met / not measured), gpu_check.log (everything printed),
benchmark_scan.json, benchmark_efficiency.json and benchmark_efficiency.png.
The exit status is 0 when no stage failed.

Only the standard library is imported here: torch and mmvim are imported by
the stage processes, after the wheels are installed.
"""
import argparse
import ast
import datetime
import glob
import json
import os
import os.path as osp
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools', 'analysis_tools')
WHEEL_DIR = osp.join(ROOT, '.whl')
SITE_DIR = '/tmp/site'  # where the wheels go on the GPU machine
PROBE_DIR = osp.join(ROOT, 'tests', 'test_ops', 'simt_probe')
MAX_FILES = 8  # what the GPU machine sends back from its output folder

STAGES = ('env', 'build', 'tests', 'scan', 'efficiency', 'amp')
TITLES = {
    'env': 'wheels, GPU, torch, CUDA, nvcc, import mmvim',
    'build': 'compile the scan kernel for the device',
    'tests': 'CUDA kernel tests on the device',
    'scan': 'selective-scan benchmark',
    'efficiency': 'Vim against DeiT: speed and memory',
    'amp': 'one AMP (bfloat16) training step of Vim-Ti',
}
BUDGETS = {'full': 480., 'quick': 180., 'dry-run': 100.}
# stage -> mode -> (cap, least useful) in seconds; a cap of None takes all
# that the later stages leave
CAPS = {
    'env': {'full': (90, 10), 'quick': (60, 10), 'dry-run': (60, 10)},
    'build': {'full': (180, 30), 'quick': (150, 30), 'dry-run': (60, 10)},
    'tests': {'full': (120, 20), 'quick': (35, 15), 'dry-run': (45, 10)},
    'scan': {'full': (60, 15), 'quick': (20, 10), 'dry-run': (30, 10)},
    'efficiency': {'full': (None, 60), 'quick': (None, 40),
                   'dry-run': (45, 15)},
    # start-up, kernel self-check, a warm-up step and the timed steps
    'amp': {'full': (45, 25), 'quick': (30, 20), 'dry-run': (30, 10)},
}
SUMMARY_RESERVE = 5.  # writing the summary, the JSON and the file listing
# a worker stops this much before its cap, to write its results
WORKER_MARGIN = {'full': 10., 'quick': 8., 'dry-run': 5.}

TEST_FILES = ['tests/test_ops/test_selective_scan_cuda.py',
              'tests/test_ops/test_simt_emulation.py']
# -k of each mode: the AddressSanitizer test is a CPU check for CI; quick
# leaves out the long sequences, whose float64 reference is slow on the CPU
TEST_SELECTION = {'full': 'not address',
                  'quick': 'not address and not 2049 and not 6085',
                  'dry-run': 'L1- or L7-'}
# what each stage does instead in the dry run (printed, and kept in the JSON)
DRY_RUN_NOTES = {
    'env': 'dry run: no GPU expected; the wheels, torch, nvcc and '
           '`import mmvim` are checked as on the GPU machine',
    'build': 'dry run: the simt build (the CUDA sources compiled for the '
             'CPU) instead of the cuda build; the probes are built on a GPU '
             'only',
    'tests': 'dry run: the emulated kernel on the CPU, -k "L1- or L7-" '
             '(10 tests) instead of both files on the device',
    'scan': 'dry run: --device cpu, batch 1, vim-ti-224 only, no '
            'end-to-end model, no reference backward',
    'efficiency': 'dry run: CPU, one thread, 1 layer per model, 32-64 px, '
                  'batch 1, one timed call per row',
    'amp': 'dry run: a 2-layer, 64-dim Vim at 64x64 on the CPU, batch 2, '
           'no memory figure',
}
TI = ['vim-ti', 'deit-ti-eager', 'deit-ti-sdpa']
S = ['vim-s', 'deit-s-eager', 'deit-s-sdpa']
# Hier-Vim-T against Swin-T (timm's on the GPU machine, which lacks
# mmpretrain), last in every plan
HIER = ['hier-vim-t', 'swin-t']


# ------------------------------------------------------------ plain helpers
def read_constants(path, names):
    """Module-level constants of a Python file, without importing it (it
    imports torch): {name: value} for those of ``names`` it assigns."""
    with open(path) as f:
        tree = ast.parse(f.read())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and \
                node.targets[0].id in names:
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


TARGETS = read_constants(
    osp.join(TOOLS, 'benchmark_efficiency.py'),
    {'TARGET_RESOLUTION', 'TARGET_FPS_RATIO', 'TARGET_MEMORY_FRACTION',
     'PAPER_RESOLUTIONS'})


def extract_wheels(wheels, site):
    """Unpack pure-Python wheels into ``site`` (what pip does for them,
    less the scripts): the fallback where pip is missing."""
    import zipfile
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)


def parse_junit(path):
    """Counts and failures of a pytest ``--junitxml`` file: dict(tests,
    passed, failed, errors, skipped, failures=[(name, message)])."""
    root = ElementTree.parse(path).getroot()
    counts = dict(tests=0, passed=0, failed=0, errors=0, skipped=0)
    failures = []
    for case in root.iter('testcase'):
        counts['tests'] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = 'passed'
        for child in case:
            if child.tag in ('failure', 'error', 'skipped'):
                outcome = {'failure': 'failed', 'error': 'errors',
                           'skipped': 'skipped'}[child.tag]
                if child.tag != 'skipped':
                    message = (child.get('message') or child.text or '')
                    failures.append((name, message.strip().split('\n')[0]
                                     [:300]))
                break
        counts[outcome] += 1
    return dict(counts, failures=failures)


_VERBOSE_RESULT = re.compile(
    r'^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b')


def parse_pytest_verbose(text):
    """Counts from ``pytest -v`` progress lines ('path::test PASSED [ 5%]'),
    for a run stopped before it wrote its JUnit XML."""
    counts = dict(tests=0, passed=0, failed=0, errors=0, skipped=0)
    failures, seen = [], set()
    for line in text.splitlines():
        match = _VERBOSE_RESULT.match(line.strip())
        if not match:
            continue
        name, outcome = match.groups()
        if (name, outcome) in seen:
            continue
        seen.add((name, outcome))
        key = {'PASSED': 'passed', 'XPASS': 'passed', 'FAILED': 'failed',
               'ERROR': 'errors', 'SKIPPED': 'skipped',
               'XFAIL': 'skipped'}[outcome]
        # a test that fails in teardown is reported twice: count it once
        if outcome == 'ERROR' and (name, 'PASSED') in seen:
            counts['passed'] -= 1
            counts['tests'] -= 1
        counts['tests'] += 1
        counts[key] += 1
        if key in ('failed', 'errors'):
            failures.append((name, outcome))
    return dict(counts, failures=failures)


def last_error(output):
    """The line of a process's output that says what went wrong: the last
    exception line ('ValueError: ...'), else the last three lines."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines
              if re.match(r'^[\w.]*(Error|Exception|Interrupt)\b', line)]
    return errors[-1] if errors else ' | '.join(lines[-3:])


def nvcc_release(text):
    """'13.0' from the output of ``nvcc --version`` (None if absent)."""
    match = re.search(r'release (\d+\.\d+)', text or '')
    return match.group(1) if match else None


def paper_targets(efficiency):
    """The paper's 1248 claims for Vim-Ti against eager DeiT-Ti, from
    benchmark_efficiency's ``targets``: one entry per (metric, neck, dtype),
    status 'met', 'not met' or 'not measured'."""
    found = {(t['neck'], t['dtype']): t
             for t in (efficiency or {}).get('targets', [])
             if t.get('baseline') == 'deit-ti-eager'}
    entries = []
    for neck in ('none', 'fpn'):
        for dtype in ('float32', 'bfloat16'):
            t = found.get((neck, dtype), {})
            for metric, met_key, value_key, threshold in (
                    ('speed', 'fps_met', 'fps_ratio',
                     f">= {TARGETS['TARGET_FPS_RATIO']}x"),
                    ('memory', 'memory_met', 'memory_fraction',
                     f"<= {TARGETS['TARGET_MEMORY_FRACTION']:.1%}")):
                status = 'not measured' if met_key not in t else \
                    'met' if t[met_key] else 'not met'
                entries.append(dict(
                    target=metric, threshold=threshold, neck=neck,
                    dtype=dtype, resolution=TARGETS['TARGET_RESOLUTION'],
                    status=status, value=t.get(value_key),
                    note=t.get('note')))
    return entries


# ------------------------------------------------------------------ driver
class Log:
    """Everything printed goes to stdout and to OUT_DIR/gpu_check.log."""

    def __init__(self, path):
        self.file = open(path, 'w', buffering=1)
        self.lock = threading.Lock()

    def __call__(self, text=''):
        with self.lock:
            sys.stdout.write(text + '\n')
            sys.stdout.flush()
            self.file.write(text + '\n')

    def close(self):
        self.file.close()


class Interrupted(Exception):
    """SIGTERM: the run is being stopped from outside."""


class GpuCheck:

    def __init__(self, args):
        self.args = args
        self.mode = 'dry-run' if args.dry_run else \
            'quick' if args.quick else 'full'
        self.out = osp.abspath(args.out_dir)
        os.makedirs(self.out, exist_ok=True)
        self.budget = args.budget or BUDGETS[self.mode]
        self.start = time.monotonic()
        self.deadline = self.start + self.budget
        self.log = Log(osp.join(self.out, 'gpu_check.log'))
        self.tmp = tempfile.mkdtemp(prefix='gpu_check_')
        # the dry run must not disturb a real /tmp/site of another run
        self.site = osp.join(self.tmp, 'site') if args.dry_run else SITE_DIR
        self.site_used = False
        self.python = sys.executable
        self.child = None
        self.facts = dict(gpu=False, mmvim=False, kernel=False)
        self.stages = {name: dict(
            index=i, title=TITLES[name], status='pending', reason=None,
            error=None, seconds=None, cap_seconds=None, complete=None,
            note=DRY_RUN_NOTES[name] if args.dry_run else None,
            commands=[], results={}) for i, name in enumerate(STAGES)}
        self.report = dict(
            tool='tools/gpu_check.sh', mode=self.mode,
            started=datetime.datetime.now().isoformat(timespec='seconds'),
            budget_seconds=self.budget, wall_seconds=None,
            python=sys.executable, stages=self.stages, targets=[],
            files=[])

    # ---------------------------------------------------------- plumbing
    def left(self):
        return self.deadline - time.monotonic()

    def env(self, **extra):
        """The stage processes' environment: the wheels' folder and the
        checkout first on PYTHONPATH (mmvim is imported from the checkout),
        the wheels' scripts (ninja) last on PATH."""
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        paths = ([self.site] if self.site_used else []) + [ROOT]
        if env.get('PYTHONPATH'):
            paths.append(env['PYTHONPATH'])
        env['PYTHONPATH'] = os.pathsep.join(paths)
        if self.site_used and osp.isdir(osp.join(self.site, 'bin')):
            env['PATH'] = env.get('PATH', '') + os.pathsep + \
                osp.join(self.site, 'bin')
        env.update(extra)
        return env

    def run(self, cmd, timeout, env=None, stage=None):
        """Run ``cmd`` in the checkout, its output streamed to the log;
        stopped (its whole process group) after ``timeout`` seconds.
        Returns dict(rc, timed_out, seconds, output)."""
        self.log(f'$ {shlex.join(cmd)}   (cap {timeout:.0f} s)')
        if stage is not None:
            stage['commands'].append(shlex.join(cmd))
        start = time.monotonic()
        lines = []
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env or self.env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors='replace',
            start_new_session=True)
        self.child = proc

        def pump():
            for line in proc.stdout:
                line = line.rstrip('\n')
                lines.append(line)
                self.log('  ' + line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=max(timeout, 1.))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.log(f'  [stopped at the {timeout:.0f} s cap]')
            self.stop_child()
        except Interrupted:
            self.stop_child()
            raise
        finally:
            reader.join(timeout=5)
            self.child = None
        return dict(rc=proc.returncode, timed_out=timed_out,
                    seconds=time.monotonic() - start,
                    output='\n'.join(lines))

    def stop_child(self):
        """SIGTERM, then SIGKILL, to the running stage's process group
        (its own session: the builds and workers it started go too)."""
        proc = self.child
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 2)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def worker(self, name, timeout, stage, env=None, **config):
        """Run ``gpu_check.py --worker NAME`` with ``config`` (and the
        stage environment ``env``); returns (run result, the worker's
        result dict or None)."""
        config_path = osp.join(self.tmp, f'{name}_config.json')
        result_path = osp.join(self.tmp, f'{name}_result.json')
        # the worker stops early enough to write its results
        margin = min(WORKER_MARGIN[self.mode], timeout / 4)
        config.update(mode=self.mode, out_dir=self.out, result=result_path,
                      seconds=timeout - margin)
        with open(config_path, 'w') as f:
            json.dump(config, f)
        run = self.run([self.python, osp.abspath(__file__), '--worker', name,
                        config_path], timeout, env=env, stage=stage)
        result = None
        if osp.exists(result_path):
            with open(result_path) as f:
                result = json.load(f)
        return run, result

    def save(self):
        self.report['wall_seconds'] = time.monotonic() - self.start
        path = osp.join(self.out, 'gpu_check.json')
        with open(path + '.tmp', 'w') as f:
            json.dump(self.report, f, indent=2)
        os.replace(path + '.tmp', path)

    # ------------------------------------------------------------- stages
    def stage_cap(self, name):
        """(cap, None) for the next stage, or (None, reason to skip it).

        The cap is the stage's own, cut to leave each later stage its
        least; when that leaves less than this stage's least, it still
        gets its least if the budget has it (the stages run in order of
        priority: each needs the ones before it)."""
        cap, least = CAPS[name][self.mode]
        later = STAGES[STAGES.index(name) + 1:]
        reserve = SUMMARY_RESERVE + sum(CAPS[s][self.mode][1] for s in later
                                        if self.stages[s]['status'] ==
                                        'pending')
        left = self.left()
        available = left - reserve
        if available >= least:
            return (available if cap is None else min(cap, available)), None
        if left - SUMMARY_RESERVE >= least:
            return float(least), None
        return None, (f'time budget: {max(left, 0):.0f} s of '
                      f'{self.budget:.0f} s left ({SUMMARY_RESERVE:.0f} s '
                      f'kept for the summary), this stage needs at least '
                      f'{least} s')

    def needs(self, name):
        """Why stage ``name`` cannot run after the earlier ones (or None)."""
        env, build = self.stages['env'], self.stages['build']
        if env['status'] == 'skipped':
            return f"stage env was skipped ({env['reason']})"
        if self.mode != 'dry-run' and not self.facts['gpu']:
            return ('no GPU visible to PyTorch (stage env); on a machine '
                    'without one, --dry-run rehearses the stages on the CPU')
        if not self.facts['mmvim']:
            if env['results'].get('mmvim_error') is None:
                return f"stage env failed ({env['error']})"
            return ('import mmvim failed (stage env): prepare the wheels '
                    'with bash tools/gpu_check_wheels.sh and carry .whl')
        if name != 'build' and not self.facts['kernel']:
            if build['status'] == 'skipped':
                return f"stage build was skipped ({build['reason']})"
            kind = 'simt' if self.mode == 'dry-run' else 'cuda'
            return f'the {kind} scan kernel did not build (stage build)'
        return None

    def run_stage(self, name, fn):
        stage = self.stages[name]
        self.log(f"\n=== stage {stage['index']} {name}: {stage['title']} "
                 f'({self.mode}, {max(self.left(), 0):.0f} s of the budget '
                 'left) ===')
        if stage['note']:
            self.log(stage['note'])
        reason = self.needs(name) if name != 'env' else None
        cap = None
        if reason is None:
            cap, reason = self.stage_cap(name)
        if reason is not None:
            stage.update(status='skipped', reason=reason, seconds=0.)
            self.log(f'stage {name} skipped: {reason}')
            self.save()
            return
        stage['cap_seconds'] = round(cap, 1)
        start = time.monotonic()
        try:
            fn(stage, cap)
        except Interrupted:
            stage.update(status='failed', error='stopped from outside '
                         '(SIGTERM)', seconds=time.monotonic() - start)
            raise
        except Exception as err:  # noqa: BLE001 (a stage's bug, reported)
            stage.update(status='failed',
                         error=f'{type(err).__name__}: {err}')
        stage['seconds'] = round(time.monotonic() - start, 1)
        if stage['status'] == 'pending':
            stage['status'] = 'ran'
        line = f"stage {name}: {stage['status']} in {stage['seconds']} s"
        if stage['error']:
            line += f" -- {stage['error']}"
        elif stage['reason']:
            line += f" -- {stage['reason']}"
        self.log(line)
        self.save()

    def finish_run(self, stage, run, what):
        """Mark ``stage`` from a finished or stopped process."""
        if run['timed_out']:
            stage.update(complete=False, reason=(
                f"stopped at its {stage['cap_seconds']:.0f} s cap: the rest "
                f'of {what} was skipped'))
        elif run['rc'] != 0:
            stage.update(status='failed', error=(
                f"{what} exited with {run['rc']}: "
                + last_error(run['output']))[:800])
        else:
            stage['complete'] = True

    # stage 0
    def stage_env(self, stage, cap):
        start = time.monotonic()
        results = stage['results']
        wheels = sorted(glob.glob(osp.join(WHEEL_DIR, '*.whl')))
        results['wheels'] = [osp.basename(w) for w in wheels]
        if wheels:
            os.makedirs(self.site, exist_ok=True)
            run = self.run([self.python, '-m', 'pip', 'install', '-q',
                            '--no-index', '--no-deps', '--no-compile',
                            '--no-cache-dir', '--upgrade', '--target',
                            self.site] + wheels, cap / 2, stage=stage)
            results['site'] = self.site
            results['wheels_installed_by'] = 'pip'
            if run['rc'] != 0 or run['timed_out']:
                # pure-Python wheels are zip files of the installed layout
                self.log('pip could not install them: unpacking the wheels '
                         'instead')
                extract_wheels(wheels, self.site)
                results['wheels_installed_by'] = 'unzip (pip failed: ' + \
                    run['output'][-200:] + ')'
            self.site_used = True
        else:
            self.log('no .whl folder with wheels: the installed packages '
                     'must provide mmengine and mmcv.cnn (on the GPU '
                     'machine: bash tools/gpu_check_wheels.sh here, carry '
                     '.whl)')
        run, info = self.worker(
            'env', max(cap - (time.monotonic() - start), 5.), stage)
        if info is None:
            stage.update(status='failed', error=(
                'the environment probe did not finish: '
                + run['output'][-300:]))
            return
        results.update(info)
        self.facts['gpu'] = bool(info.get('cuda_available'))
        self.facts['mmvim'] = info.get('mmvim_error') is None
        problems = []
        if info.get('mmvim_error'):
            problems.append(f"import mmvim failed: {info['mmvim_error']}; "
                            'fix: bash tools/gpu_check_wheels.sh here and '
                            'carry .whl')
        if self.mode != 'dry-run' and not self.facts['gpu']:
            problems.append('no GPU visible to PyTorch: run this on the GPU '
                            'machine, or pass --dry-run for the CPU '
                            'rehearsal')
        if problems:
            stage.update(status='failed', error='; '.join(problems))

    # stage 1
    def stage_build(self, stage, cap):
        run, result = self.worker('build', cap, stage)
        builds = (result or {}).get('builds', [])
        stage['results']['builds'] = builds
        main = next((b for b in builds if b.get('main')), None)
        self.facts['kernel'] = bool(main and main.get('ok'))
        if main is not None:
            stage['results'].update(
                kernel=main['kind'], kernel_seconds=main.get('seconds'),
                kernel_cached=main.get('cached'), archs=main.get('archs'))
        if run['timed_out']:
            stage.update(status='failed', error=(
                f'the builds did not finish within the {cap:.0f} s cap'))
        elif not self.facts['kernel']:
            error = (main or {}).get('error') or run['output'][-400:]
            stage.update(status='failed',
                         error=f'the scan kernel did not build: {error}')
        others = [b for b in builds if not b.get('main') and not b.get('ok')]
        if others:
            stage['results']['other_build_errors'] = [
                f"{b['op']} {b['kind']}: {b.get('error')}" for b in others]

    # stage 2
    def stage_tests(self, stage, cap):
        junit = osp.join(self.tmp, 'tests.xml')
        selection = TEST_SELECTION[self.mode]
        cmd = [self.python, '-m', 'pytest', '-v', '-p', 'no:cacheprovider',
               *TEST_FILES, '-k', selection, f'--junitxml={junit}']
        run = self.run(cmd, cap, stage=stage)
        results = stage['results']
        results['selection'] = selection
        if osp.exists(junit) and not run['timed_out']:
            counts = parse_junit(junit)
            results['counted_from'] = 'junit xml'
        else:
            counts = parse_pytest_verbose(run['output'])
            results['counted_from'] = 'pytest -v lines (no JUnit XML)'
        results.update(counts)
        if run['timed_out']:
            stage.update(complete=False, reason=(
                f"stopped at its {cap:.0f} s cap after {counts['tests']} "
                'tests: the rest was skipped'))
        else:
            stage['complete'] = True
        bad = counts['failed'] + counts['errors']
        if bad:
            names = ', '.join(n for n, _ in counts['failures'][:5])
            stage.update(status='failed', error=(
                f"{bad} of {counts['tests']} tests failed: {names}"))
        elif run['rc'] not in (0, None) and not run['timed_out']:
            stage.update(status='failed', error=(
                f"pytest exited with {run['rc']}: "
                + run['output'][-300:]))

    # stage 3
    def stage_scan(self, stage, cap):
        out = osp.join(self.out, 'benchmark_scan.json')
        # it stops early enough to write its JSON
        margin = min(WORKER_MARGIN[self.mode], cap / 4)
        cmd = [self.python, osp.join(TOOLS, 'benchmark_scan.py'),
               '--out', out, '--time-budget', f'{cap - margin:.0f}']
        if self.mode == 'dry-run':
            cmd += ['--device', 'cpu', '--batch', '1', '--cases',
                    'vim-ti-224', '--skip-model', '--repeats', '1']
        elif self.mode == 'quick':
            cmd += ['--device', 'cuda', '--cases', 'vim-ti-224',
                    'vim-ti-1248', '--warmup', '1', '--repeats', '3',
                    '--ref-repeats', '1', '--skip-model']
        else:
            cmd += ['--device', 'cuda', '--warmup', '1', '--repeats', '5',
                    '--ref-backward', '--ref-repeats', '1']
        env = self.env(**({} if self.mode == 'dry-run' else
                          {'MMVIM_SCAN_IMPL': 'cuda'}))
        run = self.run(cmd, cap, env=env, stage=stage)
        self.finish_run(stage, run, 'the scan benchmark')
        if osp.exists(out):
            with open(out) as f:
                stage['results'].update(summarize_scan(json.load(f)))
            if stage['results'].get('skipped'):
                stage['complete'] = False
                stage['reason'] = stage['reason'] or (
                    f"{len(stage['results']['skipped'])} measurements "
                    'skipped by the time budget (listed in '
                    'benchmark_scan.json)')

    # stage 4
    def stage_efficiency(self, stage, cap):
        out = osp.join(self.out, 'benchmark_efficiency.json')
        run, result = self.worker('efficiency', cap, stage)
        self.finish_run(stage, run, 'the efficiency benchmark')
        if osp.exists(out):
            with open(out) as f:
                data = json.load(f)
            stage['results'].update(summarize_efficiency(data))
            self.report['targets'] = paper_targets(data)
            png = osp.join(self.out, 'benchmark_efficiency.png')
            if not osp.exists(png) and self.left() > SUMMARY_RESERVE + 25:
                self.log('the plot is missing (the worker was stopped): '
                         'drawing it from the JSON')
                self.run([self.python,
                          osp.join(TOOLS, 'benchmark_efficiency.py'),
                          '--replot', out, '--plot', png], 20, stage=stage)
        if result:
            stage['results']['plan'] = result.get('plan', [])
        skipped = stage['results'].get('rows_skipped', 0)
        if skipped and stage['status'] != 'failed':
            stage['complete'] = False
            stage['reason'] = stage['reason'] or (
                f'{skipped} rows skipped by the time budget (status '
                "'skipped' in benchmark_efficiency.json)")

    # stage 5
    def stage_amp(self, stage, cap):
        # on the GPU the kernel, or an error: the reference would take
        # minutes per step at 1024x1024
        env = self.env(**({} if self.mode == 'dry-run' else
                          {'MMVIM_SCAN_IMPL': 'cuda'}))
        run, result = self.worker('amp', cap, stage, env=env)
        self.finish_run(stage, run, 'the AMP step')
        if run['timed_out'] and not result:
            stage.update(status='failed', error=(
                f'the AMP step did not finish within its {cap:.0f} s cap'))
        if result:
            stage['results'].update(result)
            if result.get('error') and stage['status'] != 'failed':
                stage.update(status='failed', error=result['error'])

    # ------------------------------------------------------------ summary
    def summary_lines(self):
        lines = [f"\n=== gpu_check summary ({self.mode}: "
                 f"{time.monotonic() - self.start:.0f} s of the "
                 f'{self.budget:.0f} s budget) ===',
                 f"{'stage':<14}{'status':<9}{'seconds':>8}  details"]
        for name, stage in self.stages.items():
            status = stage['status']
            if stage['complete'] is False and status == 'ran':
                status = 'partial'
            seconds = '' if stage['seconds'] is None else \
                f"{stage['seconds']:.0f}"
            detail = stage_details(name, stage)
            lines.append(f"{stage['index']} {name:<12}{status:<9}"
                         f'{seconds:>8}  {detail}')
        res = TARGETS['TARGET_RESOLUTION']
        lines.append(f'\npaper targets at {res}x{res}, Vim-Ti against eager '
                     'DeiT-Ti, inference:')
        by_config = {}
        for t in self.report['targets']:
            by_config.setdefault((t['neck'], t['dtype']), []).append(t)
        for (neck, dtype), entries in by_config.items():
            parts = []
            for t in entries:
                value = '' if t['value'] is None else (
                    f"{t['value']:.2f}x " if t['target'] == 'speed' else
                    f"{t['value']:.1%} ")
                parts.append(f"{t['target']} {value}({t['threshold']}) "
                             f"{t['status']}")
            where = 'backbone' if neck == 'none' else 'backbone+FPN'
            lines.append(f'  {where:<13}{dtype:<10}' + ' | '.join(parts))
        return lines

    def main(self):
        self.log(f'gpu_check {self.mode} in {ROOT}, output {self.out}, '
                 f'budget {self.budget:.0f} s, python {self.python}')
        self.report['targets'] = paper_targets(None)
        self.save()
        stages = dict(env=self.stage_env, build=self.stage_build,
                      tests=self.stage_tests, scan=self.stage_scan,
                      efficiency=self.stage_efficiency, amp=self.stage_amp)
        try:
            for name in STAGES:
                self.run_stage(name, stages[name])
        except Interrupted:
            self.log('stopped from outside (SIGTERM): writing what there is')
            for stage in self.stages.values():
                if stage['status'] == 'pending':
                    stage.update(status='skipped',
                                 reason='the run was stopped from outside')
        finally:
            for line in self.summary_lines():
                self.log(line)
            self.finish_files()
            self.save()
            self.log.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        return 1 if any(s['status'] == 'failed'
                        for s in self.stages.values()) else 0

    def finish_files(self):
        """Leave no temporary file in OUT_DIR; say what is there."""
        for path in glob.glob(osp.join(self.out, '*.tmp')):
            os.remove(path)
        files = sorted(os.listdir(self.out))
        if 'gpu_check.json' not in files:
            files = sorted(files + ['gpu_check.json'])
        self.report['files'] = files
        self.log(f"\n{len(files)} files in {self.out}: {', '.join(files)}")
        if len(files) > MAX_FILES:
            self.log(f'WARNING: more than {MAX_FILES} files in {self.out}: '
                     'the GPU machine sends back only 8; give gpu_check an '
                     'empty folder')


def summarize_scan(data):
    """Key numbers of benchmark_scan.json: per case, the fused kernel's
    times and bandwidth and its speed-up over the flip composition and the
    reference."""
    cases = {}
    for row in data.get('scan', []):
        cases.setdefault(row['case'], {})[row['impl']] = row
    summary = []
    for case, impls in cases.items():
        kernel = impls.get('kernel')
        if kernel is None:
            continue
        entry = dict(case=case, batch=kernel['batch'],
                     forward_ms=kernel['forward_s'] * 1e3,
                     forward_GBps=kernel.get('forward_GBps'),
                     forward_fraction_of_peak=kernel.get(
                         'forward_fraction_of_peak'))
        if 'forward_backward_s' in kernel:
            entry['forward_backward_ms'] = kernel['forward_backward_s'] * 1e3
            entry['forward_backward_GBps'] = kernel.get(
                'forward_backward_GBps')
        for other in ('flip', 'ref'):
            base = impls.get(other)
            if base is None:
                continue
            entry[f'forward_speedup_vs_{other}'] = \
                base['forward_s'] / kernel['forward_s']
            if 'forward_backward_s' in base and 'forward_backward_s' in \
                    kernel:
                entry[f'forward_backward_speedup_vs_{other}'] = \
                    base['forward_backward_s'] / kernel['forward_backward_s']
        summary.append(entry)
    return dict(kernel=data.get('kernel'), device_name=data.get(
        'device_name'), peak_bandwidth_GBps=data.get('peak_bandwidth_GBps'),
                cases=summary, model=data.get('model', []),
                skipped=data.get('skipped', []))


def summarize_efficiency(data):
    """Key numbers of benchmark_efficiency.json: row counts by status and
    the Vim-Ti / eager DeiT-Ti comparisons at the target resolution."""
    rows = data.get('rows', [])
    statuses = [r['status'] for r in rows]
    at_target = [
        dict(neck=e['neck'], dtype=e['dtype'], mode=e['mode'],
             fps_ratio=e['fps_ratio'], memory_fraction=e['memory_fraction'],
             vim_status=e['vim_status'], baseline_status=e['baseline_status'])
        for e in data.get('ratios', [])
        if e['vim'] == 'vim-ti' and e['baseline'] == 'deit-ti-eager'
        and e['resolution'] == TARGETS['TARGET_RESOLUTION']]
    largest = {}
    for r in rows:
        if r['status'] == 'ok' and r['mode'] == 'inference' and \
                r['neck'] == 'none':
            key = f"{r['model']} {r['dtype']}"
            largest[key] = max(largest.get(key, 0), r['resolution'])
    return dict(device_name=data.get('device_name'),
                scan_impl=data.get('scan_impl'),
                deit_impl=data.get('deit_impl'), rows=len(rows),
                rows_ok=statuses.count('ok'), rows_oom=statuses.count('oom'),
                rows_skipped=statuses.count('skipped'),
                vim_ti_vs_eager_deit_ti_at_target=at_target,
                largest_inference_resolution=largest)


def stage_details(name, stage):
    """One line of key numbers for the summary table."""
    r = stage['results']
    if stage['status'] == 'skipped':
        return stage['reason'] or ''
    if stage['status'] == 'failed' and not r:
        return stage['error'] or ''
    text = ''
    if name == 'env':
        gpu = r.get('gpu_name') or 'no GPU'
        text = (f"{gpu} | torch {r.get('torch')} (CUDA "
                f"{r.get('torch_cuda')}) | nvcc {r.get('nvcc')} | "
                f"{len(r.get('wheels', []))} wheels")
    elif name == 'build':
        if r.get('kernel'):
            cached = ' (cached)' if r.get('kernel_cached') else ''
            archs = f" for {';'.join(r['archs'])}" if r.get('archs') else ''
            seconds = r.get('kernel_seconds')
            text = f"{r['kernel']} kernel{archs}{cached}" + (
                f' in {seconds:.1f} s' if seconds is not None else '')
    elif name == 'tests':
        if 'tests' in r:
            text = (f"{r['passed']} passed, {r['failed']} failed, "
                    f"{r['errors']} errors, {r['skipped']} skipped")
    elif name == 'scan':
        if r.get('cases'):
            c = r['cases'][-1]
            text = f"{c['case']} b{c['batch']}: fwd {c['forward_ms']:.2f} ms"
            if c.get('forward_GBps') is not None:
                text += f" {c['forward_GBps']:.3g} GB/s"
            if c.get('forward_fraction_of_peak') is not None:
                text += f" ({c['forward_fraction_of_peak']:.0%} of peak)"
            if 'forward_speedup_vs_flip' in c:
                text += f", {c['forward_speedup_vs_flip']:.1f}x vs flip"
            if 'forward_speedup_vs_ref' in c:
                text += f", {c['forward_speedup_vs_ref']:.0f}x vs ref"
    elif name == 'efficiency':
        if 'rows' in r:
            text = (f"{r['rows_ok']} rows ok, {r['rows_oom']} OOM, "
                    f"{r['rows_skipped']} skipped (DeiT: {r['deit_impl']})")
    elif name == 'amp':
        if r.get('seconds_per_step') is not None:
            peak = 'n/a' if r.get('peak_memory_gib') is None else \
                f"{r['peak_memory_gib']:.2f} GiB"
            text = (f"{r['model']} {r['resolution']}px b{r['batch']} "
                    f"{r['dtype']}: {r['seconds_per_step']:.3f} s/step, "
                    f'peak {peak}')
    extra = stage['error'] or stage['reason']
    return f'{text} -- {extra}' if text and extra else text or extra or ''


# ------------------------------------------------------------------ workers
# Each runs in a process of its own, imports torch / mmvim, and writes its
# result as JSON to config['result'].

def worker_env(config):
    import platform

    import torch
    info = dict(python=platform.python_version(), torch=torch.__version__,
                torch_cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available(),
                cpu_count=os.cpu_count(), gpu_name=None)
    print(f"python {info['python']}, torch {info['torch']} (CUDA "
          f"{info['torch_cuda']}), {info['cpu_count']} CPUs")
    if info['cuda_available']:
        props = torch.cuda.get_device_properties(0)
        clock = getattr(props, 'memory_clock_rate', 0) or 0
        bus = getattr(props, 'memory_bus_width', 0) or 0
        info.update(
            gpu_name=props.name, gpu_count=torch.cuda.device_count(),
            capability=f'{props.major}.{props.minor}',
            gpu_memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            peak_bandwidth_GBps=2 * clock * 1e3 * bus / 8 / 1e9
            if clock and bus else None)
        print(f"GPU: {props.name} (sm_{props.major}{props.minor}), "
              f"{info['gpu_memory_gib']:.0f} GiB, "
              f'{props.multi_processor_count} SMs')
        smi = shutil.which('nvidia-smi')
        if smi:
            out = subprocess.run(
                [smi, '--query-gpu=driver_version', '--format=csv,noheader'],
                capture_output=True, text=True)
            info['driver'] = out.stdout.strip() or None
            print(f"driver {info['driver']}")
    else:
        print('no GPU visible to PyTorch')
    info['mmvim_error'] = home = None
    try:
        import mmvim  # noqa: F401 (needs mmengine and mmcv.cnn)
        from mmvim.ops.extension_loader import cuda_home
        info['mmvim'] = mmvim.__file__
        home = cuda_home()  # the toolkit the cuda build will use
    except Exception as err:  # noqa: BLE001 (reported as the finding)
        info['mmvim_error'] = f'{type(err).__name__}: {err}'
        print(f"import mmvim failed: {info['mmvim_error']}")
    nvcc = osp.join(home, 'bin', 'nvcc') if home else shutil.which('nvcc')
    info['cuda_home'] = home
    if nvcc:
        out = subprocess.run([nvcc, '--version'], capture_output=True,
                             text=True)
        info['nvcc'] = nvcc_release(out.stdout)
        print(f"nvcc {info['nvcc']} ({nvcc})")
    else:
        info['nvcc'] = None
        print('nvcc: not found (the cuda build needs it)')
    for name in ('numpy', 'mmengine', 'mmcv', 'timm', 'mmpretrain'):
        try:
            module = __import__(name)
            info[f'{name}_version'] = getattr(module, '__version__', '?')
            info[f'{name}_file'] = module.__file__  # the wheels' or not
        except Exception:  # noqa: BLE001 (absent is an answer)
            info[f'{name}_version'] = info[f'{name}_file'] = None
    print('packages: ' + ', '.join(
        f"{n} {info[f'{n}_version']}" for n in
        ('numpy', 'mmengine', 'mmcv', 'timm', 'mmpretrain')))
    info['ninja'] = shutil.which('ninja')
    return info


BUILD_SNIPPET = """
import json, sys, time
kind, op, probe_dir = sys.argv[1:4]
from mmvim.ops.extension_loader import build_extension, cuda_arch_list
from mmvim.ops.selective_scan_kernel import build_kernel
start = time.perf_counter()
if op == 'scan':
    module = build_kernel(kind)
else:
    module = build_extension('simt_probe', ['simt_probe.cu'], kind=kind,
                             csrc=probe_dir)
print('BUILD_RESULT ' + json.dumps(dict(
    seconds=time.perf_counter() - start, file=module.__file__,
    archs=cuda_arch_list() if kind == 'cuda' else None)))
"""


def worker_build(config):
    """The scan kernel of the run (cuda on a GPU, simt in the dry run),
    timed; on a GPU the simt kernel and the probes that stage tests load
    are built beside it, in parallel processes (each compile is one
    thread; the machine has many cores)."""
    dry = config['mode'] == 'dry-run'
    jobs = [dict(op='scan', kind='simt' if dry else 'cuda', main=True)]
    if not dry:
        jobs += [dict(op='scan', kind='simt', main=False),
                 dict(op='probe', kind='simt', main=False),
                 dict(op='probe', kind='cuda', main=False)]
    deadline = time.monotonic() + config['seconds']
    for job in jobs:
        job['log'] = tempfile.TemporaryFile(mode='w+')
        job['proc'] = subprocess.Popen(
            [sys.executable, '-c', BUILD_SNIPPET, job['kind'], job['op'],
             PROBE_DIR], stdout=job['log'], stderr=subprocess.STDOUT,
            text=True)
    builds = []
    for job in jobs:
        proc = job.pop('proc')
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1.))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log = job.pop('log')
        log.seek(0)
        output = log.read()
        log.close()
        label = f"{job['op']} {job['kind']}"
        print(f'--- build {label} ---\n{output.strip()}')
        result = next((json.loads(line.split(' ', 1)[1]) for line in
                       output.splitlines()
                       if line.startswith('BUILD_RESULT ')), None)
        job.update(ok=result is not None, cached=result is not None and
                   'building the' not in output)
        if result is not None:
            job.update(result)
        else:
            lines = [line for line in output.splitlines() if line.strip()]
            job['error'] = 'timed out' if proc.returncode in (-9, None) \
                else (lines[-1] if lines else f'exit {proc.returncode}')
        builds.append(job)
    return dict(builds=builds)


def efficiency_plan(mode, deit_impl):
    """[(label, argv of benchmark_efficiency.py)] in priority order: the
    paper's 1248 comparison first, then the rest of the paper's grid, then
    growth past it; what the budget does not reach is skipped."""
    paper = [str(r) for r in TARGETS['PAPER_RESOLUTIONS']]
    target = str(TARGETS['TARGET_RESOLUTION'])
    below = [r for r in paper if int(r) < int(target)]
    both = ['float32', 'bfloat16']
    if mode == 'dry-run':
        common = ['--device', 'cpu', '--threads', '1', '--depth', '1',
                  '--warmup', '0', '--repeats', '1', '--batch', '1',
                  '--deit-impl', deit_impl]
        grids = [
            ('ti-target', TI, 'none', 'inference', ['32'], both, []),
            ('ti-fpn', TI, 'fpn', 'inference', ['32'], ['float32'], []),
            ('ti-train', TI, 'none', 'train', ['32'], ['float32'], []),
            ('ti-grow', TI, 'none', 'inference', ['48'], ['float32'],
             ['--grow-step', '16', '--max-resolution', '64']),
            ('s-backbone', S, 'none', 'inference', ['32'], ['float32'], []),
            ('hier-backbone', HIER, 'none', 'inference', ['64'],
             ['float32'], []),
        ]
    else:
        common = ['--device', 'cuda', '--scan-impl', 'cuda', '--deit-impl',
                  deit_impl, '--batch', '32']
        common += ['--warmup', '1', '--repeats', '3'] if mode == 'quick' \
            else ['--warmup', '2', '--repeats', '5']
        train = ['--batch', '8']  # a training step keeps the activations
        # growth: until out of memory, 4096 px or a call slower than 2 s,
        # with fewer calls per row (the rows get long)
        grow = ['--grow-step', '256', '--max-call-seconds', '2',
                '--warmup', '1', '--repeats', '3']
        if mode == 'quick':
            grids = [
                ('ti-target', TI, 'none', 'inference', [target], both, []),
                ('ti-backbone', TI, 'none', 'inference', ['512', '1024'],
                 both, []),
                ('ti-fpn', TI, 'fpn', 'inference', [target], ['bfloat16'],
                 []),
                ('ti-train', TI, 'none', 'train', ['1024'], ['bfloat16'],
                 train),
                ('s-backbone', S, 'none', 'inference', [target],
                 ['bfloat16'], []),
                ('hier-backbone', HIER, 'none', 'inference',
                 ['512', '1024'], ['bfloat16'], []),
            ]
        else:
            grids = [
                ('ti-target', TI, 'none', 'inference', [target], both, []),
                ('ti-backbone', TI, 'none', 'inference', below, both, []),
                ('ti-fpn', TI, 'fpn', 'inference', paper, both, []),
                ('ti-train', TI, 'none', 'train', paper, both, train),
                ('s-backbone', S, 'none', 'inference', paper, both, []),
                ('ti-grow', TI, 'none', 'inference',
                 [str(int(target) + 256)], both, grow),
                ('ti-fpn-train', TI, 'fpn', 'train', paper, both, train),
                ('s-fpn', S, 'fpn', 'inference', paper, both, []),
                ('s-train', S, 'none', 'train', paper, both, train),
                ('s-grow', S, 'none', 'inference',
                 [str(int(target) + 256)], both, grow),
                ('hier-backbone', HIER, 'none', 'inference', paper, both,
                 []),
            ]
    plan = []
    for label, models, neck, mode_, resolutions, dtypes, extra in grids:
        if '--grow-step' not in extra:  # growth is a grid of its own
            extra = extra + ['--grow-step', '0']
        # a grid's own options replace the common ones (each takes one
        # value), so that each option appears once in the printed command
        base = []
        for option, value in zip(common[::2], common[1::2]):
            if option not in extra:
                base += [option, value]
        plan.append((label, base + ['--models', *models, '--necks', neck,
                                    '--modes', mode_, '--resolutions',
                                    *resolutions, '--dtypes', *dtypes] +
                     extra))
    return plan


def load_tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        name, osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker_efficiency(config, bench=None):
    """benchmark_efficiency.py's grid in priority order in this one process
    (one start-up, one kernel self-check), rows merged into one JSON that
    is rewritten after every row. ``bench``: the benchmark module (tests
    hand in a stand-in)."""
    import importlib.util
    deadline = time.monotonic() + config['seconds']  # imports count too
    bench = bench or load_tool('benchmark_efficiency')
    deit_impl = 'timm' if importlib.util.find_spec('timm') else 'auto'
    plan = efficiency_plan(config['mode'], deit_impl)
    out = osp.join(config['out_dir'], 'benchmark_efficiency.json')
    png = osp.splitext(out)[0] + '.png'
    order = {name: i for i, name in enumerate(bench.MODEL_SPECS)}

    def ordered(rows):
        """As benchmark_efficiency.py prints them: per config and model
        size, resolutions ascending, the models taking turns."""
        return sorted(rows, key=lambda r: (
            r['mode'] != 'inference', r['neck'] != 'none',
            r['dtype'] != 'float32', r['dtype'],
            bench.MODEL_SPECS[r['model']]['embed_dims'], r['resolution'],
            order[r['model']]))

    rows, done, info, records = [], [], None, []
    for label, argv in plan:
        args = bench.parse_args(argv + ['--out', out])
        command = 'python3 tools/analysis_tools/benchmark_efficiency.py ' + \
            shlex.join(argv)
        record = dict(label=label, command=command)
        records.append(record)
        print(f'\n--- {label}: {command}', flush=True)
        if info is None:
            scan_impl, info = bench.setup(args)
            info.update(batch='per row (see rows)', plan=records,
                        repeats=args.repeats, warmup=args.warmup)
            print(bench.TABLE_HEADER, flush=True)

        def save(row):
            done.append(row)
            bench.save_results(ordered(done), info, out)

        grid_rows = []
        for mode in args.modes:
            for neck in args.necks:
                for dtype in args.dtypes:
                    # a model out of memory at a smaller resolution of the
                    # same config in an earlier grid stays out
                    first = min(args.train_resolutions if mode == 'train'
                                else args.resolutions)
                    oom = {r['model'] for r in rows + grid_rows
                           if r['status'] == 'oom' and r['neck'] == neck
                           and r['dtype'] == dtype and r['mode'] == mode
                           and r['batch'] == args.batch
                           and r['resolution'] <= first}
                    sub = argparse.Namespace(**vars(args))
                    sub.models = [m for m in args.models if m not in oom]
                    if not sub.models:
                        continue
                    grid_rows += bench.run_grid(
                        neck, dtype, mode, sub, scan_impl, deadline=deadline,
                        on_row=save, history=done)
        rows += grid_rows
        record.update(
            rows=len(grid_rows),
            skipped=sum(r['status'] == 'skipped' for r in grid_rows))
    info['load_average_at_end'] = list(os.getloadavg())
    rows = ordered(rows)
    ratios = bench.compare(rows)
    bench.print_report(rows, ratios,
                       bench.check_targets(ratios, info['device_name']), info)
    bench.save_results(rows, info, out, png)
    print(f'\nwrote {out} and {png}')
    return dict(plan=records, rows=len(rows))


def worker_amp(config):
    """One AMP training step (bfloat16 autocast, float32 weights, AdamW)
    of Vim-Ti with a linear head on its class token: time per step
    (median) and the allocator's peak."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from mmvim.models import Vim
    from mmvim.ops import select_scan_impl
    dry = config['mode'] == 'dry-run'
    device = 'cpu' if dry else 'cuda'
    if dry:
        torch.set_num_threads(1)
        arch, resolution, batch, steps = dict(embed_dims=64, depth=2), 64, \
            2, 1
    else:
        arch, resolution, batch = 'tiny', 1024, 8
        steps = 2 if config['mode'] == 'quick' else 3
    result = dict(model='Vim-Ti' if not dry else 'Vim (64 dims, 2 layers)',
                  device=device, resolution=resolution, batch=batch,
                  dtype='bfloat16', steps=steps, optimizer='AdamW',
                  scan_impl=select_scan_impl(device), error=None)
    class Classifier(nn.Module):
        """Vim's final-normed class token (B, D) -> 1000 logits."""

        def __init__(self):
            super().__init__()
            self.backbone = Vim(arch, img_size=resolution,
                                out_type='cls_token')
            self.head = nn.Linear(self.backbone.embed_dims, 1000)

        def forward(self, x):
            return self.head(self.backbone(x)[-1])

    torch.manual_seed(0)
    model = Classifier().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    y = torch.randint(0, 1000, (batch, ), device=device)

    def sync():
        if device == 'cuda':
            torch.cuda.synchronize()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        return loss

    loss = step()  # warm-up: kernel self-check, allocator, AdamW state
    sync()
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)
    grad_norm = torch.norm(torch.stack([
        p.grad.float().norm() for p in model.parameters()
        if p.grad is not None])).item()
    result.update(seconds_per_step=statistics.median(times), times=times,
                  loss=loss.item(), grad_norm=grad_norm,
                  images_per_second=batch / statistics.median(times))
    if device == 'cuda':
        result['peak_memory_gib'] = torch.cuda.max_memory_allocated() / 2**30
        result['memory_definition'] = (
            'torch.cuda.max_memory_allocated() over the timed steps '
            '(weights, AdamW state, activations, gradients)')
    else:
        result['peak_memory_gib'] = None
        result['memory_definition'] = 'not measured on the CPU'
    if not (torch.isfinite(torch.tensor([result['loss'], grad_norm])).all()):
        result['error'] = (f"non-finite loss {result['loss']} or gradient "
                           f'norm {grad_norm} in the AMP step')
    print(json.dumps(result, indent=1))
    return result


WORKERS = dict(env=worker_env, build=worker_build,
               efficiency=worker_efficiency, amp=worker_amp)


def run_worker(name, config_path):
    with open(config_path) as f:
        config = json.load(f)
    result = WORKERS[name](config)
    with open(config['result'], 'w') as f:
        json.dump(result, f, indent=2)
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Validate and benchmark mmvim on a GPU in one run '
        '(see tools/gpu_check.sh)')
    parser.add_argument('out_dir', help='folder for the results (at most 8 '
                        'files; give it an empty one)')
    parser.add_argument('--quick', action='store_true',
                        help='the short run (180 s): fewer resolutions, '
                        'dtypes, modes and repeats, no growth past 1248')
    parser.add_argument('--dry-run', action='store_true',
                        help='no GPU: every stage on the CPU on tiny shapes')
    parser.add_argument('--budget', type=float,
                        help='seconds for the whole run (default: 480, '
                        '--quick 180, --dry-run 100)')
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--worker']:
        return run_worker(argv[1], argv[2])
    check = GpuCheck(parse_args(argv))

    def on_sigterm(signum, frame):
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    return check.main()


if __name__ == '__main__':
    sys.exit(main())
