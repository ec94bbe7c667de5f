"""How the numba backend's threads live beside the rest of a program.

Two things go wrong when other libraries run in the same process (``bench/README.md`` has
the measurements):

* **Spinning.** A thread pool whose idle threads keep spinning holds a core after its own
  work is done, and any other pool that then wants both cores waits for a scheduler slice.
  GNU OpenMP (numba's ``omp`` threading layer on Linux) spins for a while by default;
  :func:`start_pool` starts numba's pool with the spin count of ``config.openmp_spin``
  (unless the environment sets ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``), so that its
  threads stay hot between the parallel regions of one call and sleep soon after it.
* **BLAS's own pool.** The one-step path (:mod:`.single_step`) calls NumPy's BLAS. A
  BLAS that goes multi-threaded leaves its pool spinning after the call, beside torch's
  and numba's: measured on the 2-core machine, a torch ``LSTMCell`` step between such
  calls went from 0.56 to 3.8 ms. :class:`one_blas_thread` runs those calls on the
  calling thread (threadpoolctl finds the BLAS; its count is put back after the call).
* **fork.** GNU OpenMP cannot run in the child of a process that already used it: numba
  then kills the child. After a ``fork``, a child of a process whose numba pool runs on
  GNU OpenMP runs every kernel on the calling thread, chunk after chunk: the same numbers,
  on one core. Children of ``spawn`` and ``forkserver`` start their own pool.
"""

from __future__ import annotations

import os
import threading

from ...core import config

__all__ = ["start_pool", "parallel_allowed", "threads_for", "one_blas_thread"]

_forked_from_openmp = False
_start_lock = threading.Lock()


def _pool_started() -> bool:
    from numba.np.ufunc import parallel
    return bool(parallel._is_initialized)


def start_pool() -> None:
    """Start numba's thread pool now (once), so that GNU OpenMP reads the spin count of
    ``config.openmp_spin`` when it loads; a pool already started is left as it is."""
    with _start_lock:
        if _pool_started():
            return
        from numba.np.ufunc import parallel
        user_set = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
        spin = config.openmp_spin
        if user_set or spin is None:
            parallel._launch_threads()
            return
        os.environ["GOMP_SPINCOUNT"] = str(int(spin))
        try:
            parallel._launch_threads()
        finally:
            del os.environ["GOMP_SPINCOUNT"]   # for this runtime only: torch's reads its own


_blas_libraries = None


def _blas_controllers() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded now (found once)."""
    global _blas_libraries
    if _blas_libraries is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:              # a dependency; without it BLAS keeps its own count
            _blas_libraries = []
            return _blas_libraries
        _blas_libraries = [lib for lib in ThreadpoolController().lib_controllers
                           if lib.user_api == "blas"]
    return _blas_libraries


class one_blas_thread:
    """``with one_blas_thread(): ...``: BLAS calls inside run on the calling thread; each
    library's thread count is put back on exit (about 3 µs in all)."""

    __slots__ = ("_before",)

    def __enter__(self):
        self._before = []
        for lib in _blas_controllers():
            n = lib.get_num_threads()
            if n != 1:
                lib.set_num_threads(1)
                self._before.append((lib, n))
        return self

    def __exit__(self, *exc):
        for lib, n in self._before:
            lib.set_num_threads(n)
        return False


def parallel_allowed() -> bool:
    """False in the child of a fork made after numba's GNU OpenMP pool started."""
    return not _forked_from_openmp


def threads_for(flops: float, units: int) -> int:
    """Threads to split ``flops`` of work over ``units`` independent pieces: each gets at
    least ``config.min_flops_per_thread`` (waking a thread costs more than a small piece);
    1 where parallel work is off (after a fork, see :func:`parallel_allowed`)."""
    if flops < 2 * config.min_flops_per_thread or not parallel_allowed():
        return 1
    import numba
    return max(1, min(numba.get_num_threads(), units, int(flops // config.min_flops_per_thread)))


def _after_fork_in_child() -> None:
    global _forked_from_openmp
    try:
        import numba
        if _pool_started() and numba.threading_layer() == "omp":
            _forked_from_openmp = True
    except Exception:  # noqa: BLE001 - never raise inside os.fork
        _forked_from_openmp = True


os.register_at_fork(after_in_child=_after_fork_in_child)
