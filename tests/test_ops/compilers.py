"""Where a kernel cannot be compiled: a skip on a developer's machine
without the compiler, a failure on CI (``CI=true``), whose machines have
g++ and nvcc, so that a missing or misdetected compiler never passes as a
green run with the kernel tests skipped."""
import os

import pytest

from mmvim.ops.extension_loader import compiler_available


def require_compiler(kind):
    """Skip (fail on CI) when the compiler of the ``kind`` build is
    missing."""
    if compiler_available(kind):
        return
    message = f'no compiler for the {kind} build of the scan kernel'
    if os.environ.get('CI') == 'true':
        pytest.fail(f'{message} on CI, which must have it')
    pytest.skip(message)
