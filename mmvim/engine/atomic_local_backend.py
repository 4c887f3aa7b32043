"""Local files written whole or not at all.

mmengine's ``LocalBackend.put`` (what ``save_checkpoint`` writes through)
opens the target and writes into it, so a run killed while saving leaves a
truncated ``iter_N.pth``. ``import mmvim`` makes :class:`AtomicLocalBackend`
the backend of local paths: it writes a hidden temporary file next to the
target, flushes it to disk, and renames it over the target, which POSIX
makes atomic. A killed save leaves the previous file (or none) and, at
worst, a stray ``.iter_N.pth.<pid>.partial``.
"""
import contextlib
import os
import os.path as osp

from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.utils import mkdir_or_exist


class AtomicLocalBackend(LocalBackend):
    """:class:`LocalBackend` whose ``put`` / ``put_text`` are atomic."""

    def put(self, obj, filepath):
        filepath = str(filepath)
        folder, name = osp.split(osp.abspath(filepath))
        mkdir_or_exist(folder)
        partial = osp.join(folder, f'.{name}.{os.getpid()}.partial')
        try:
            with open(partial, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, filepath)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise

    def put_text(self, obj, filepath, encoding='utf-8'):
        self.put(obj.encode(encoding), filepath)


def register_atomic_local_backend():
    """Make :class:`AtomicLocalBackend` mmengine's backend for local paths
    (those without a ``prefix://``)."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
