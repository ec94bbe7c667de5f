"""What machine we are on: CPU, cores, BLAS, GPU, library versions; thread control; GEMM peak.

Nothing here imports torch or cupy unless asked about them, and every probe degrades to
``None`` (or a reason) instead of raising, so ``fastrnn info`` works on any install.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import time

import numpy as np

__all__ = ["cpu_model", "usable_cores", "blas_info", "library_versions", "gpu_name",
           "torch_status", "load_average", "machine_info", "set_threads", "gemm_peak"]

LIBRARIES = ("fastrnn", "numpy", "numba", "torch", "cupy", "threadpoolctl", "rich", "matplotlib")


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), or what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def blas_info() -> list[dict]:
    """The BLAS / OpenMP libraries loaded in this process, from threadpoolctl.

    Each entry: ``{"api", "library", "version", "architecture", "threads"}``. Falls back to
    NumPy's build configuration (no thread counts) when threadpoolctl is missing.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return _numpy_build_blas()
    return [{"api": d.get("user_api"), "library": d.get("internal_api"),
             "version": d.get("version"), "architecture": d.get("architecture"),
             "threads": d.get("num_threads")} for d in threadpool_info()]


def _numpy_build_blas() -> list[dict]:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return [{"api": "blas", "library": blas.get("name"), "version": blas.get("version"),
                 "architecture": None, "threads": None}]
    except Exception:   # older NumPy or an unusual build: say nothing rather than fail
        return []


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cupy_version() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return None
    for dist in importlib.metadata.packages_distributions().get("cupy", []):
        v = _version(dist)
        if v:
            return v
    return "unknown"


def library_versions() -> dict[str, str | None]:
    """Installed versions (None when not installed) without importing the libraries."""
    out = {}
    for name in LIBRARIES:
        if name == "cupy":
            out[name] = _cupy_version()
        elif name == "fastrnn":
            from .. import __version__
            out[name] = __version__
        else:
            out[name] = _version(name)
    return out


def torch_status() -> tuple[str | None, str | None]:
    """(reason torch cannot run or None, reason torch-cuda cannot run or None)."""
    try:
        import torch
    except ImportError as exc:
        reason = f"PyTorch is not installed ({exc}); pip install 'fastrnn[bench]'"
        return reason, reason
    if not torch.cuda.is_available():
        why = ("this PyTorch build has no CUDA" if torch.version.cuda is None
               else "PyTorch sees no CUDA GPU")
        return None, why
    return None, None


def gpu_name() -> str | None:
    """The name of CUDA device 0 as PyTorch or CuPy sees it; None without a usable GPU."""
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        try:
            import torch
            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except Exception:
            pass
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
            return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            pass
    return None


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), None where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_info(threads: int | None = None) -> dict:
    """Everything the benchmark header and JSON record about this machine."""
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "threads": threads,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "blas": blas_info(),
        "gpu": gpu_name(),
        "load_avg": load_average(),
        "versions": library_versions(),
    }


@contextlib.contextmanager
def set_threads(n: int):
    """Limit BLAS (threadpoolctl), PyTorch and Numba to ``n`` threads inside the block.

    Yields a dict of what each library was actually set to (Numba cannot exceed its
    ``NUMBA_NUM_THREADS``); the previous settings come back on exit.
    """
    applied: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
            stack.enter_context(threadpool_limits(limits=n))
            applied["blas"] = n
        except ImportError:
            pass
        if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
            import torch
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            stack.callback(torch.set_num_threads, before)
            applied["torch"] = n
        if importlib.util.find_spec("numba") is not None:
            import numba
            before = numba.get_num_threads()
            k = min(n, numba.config.NUMBA_NUM_THREADS)
            numba.set_num_threads(k)
            stack.callback(numba.set_num_threads, before)
            applied["numba"] = k
        yield applied


def _gemm_operands(device: str, dtype: str, n: int):
    """(a, b, out, matmul, sync) for an n x n product on ``device`` ("cpu" or "gpu")."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    if device == "cpu":
        return a, b, np.empty_like(a), np.matmul, lambda: None
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
            sync = cupy.cuda.get_current_stream().synchronize
            a, b = cupy.asarray(a), cupy.asarray(b)
            return a, b, cupy.empty_like(a), cupy.matmul, sync
        except Exception:
            pass
    import torch
    a, b = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    return a, b, torch.empty_like(a), torch.matmul, torch.cuda.synchronize


def gemm_peak(dtype="float32", device: str = "cpu", n: int = 1600, max_s: float = 1.0) -> float:
    """Best GFLOP/s of an ``n x n`` by ``n x n`` matrix product in ``dtype`` on ``device``.

    ``device="cpu"``: the better of NumPy's BLAS and the numba backend's own packed GEMM
    (which outruns an OpenBLAS limited to AVX2 kernels); ``"gpu"``: cuBLAS through CuPy (or
    PyTorch when CuPy cannot run), synchronising before the clock is read. Each gets one
    untimed product, then up to 5 timed ones within about ``max_s`` seconds (at least 2);
    the fastest counts.
    """
    a, b, c, matmul, sync = _gemm_operands(device, str(np.dtype(dtype)), n)
    candidates = [lambda: matmul(a, b, out=c)]
    if device == "cpu":
        try:
            from ..backends.numba.gemm import matmul as packed_matmul
            candidates.append(lambda: packed_matmul(a, b))
        except ImportError:
            pass
    best = float("inf")
    for run in candidates:
        run()
        sync()
        start = time.perf_counter()
        for k in range(5):
            t0 = time.perf_counter()
            run()
            sync()
            best = min(best, time.perf_counter() - t0)
            if k >= 1 and time.perf_counter() - start > max_s:
                break
    return 2.0 * n ** 3 / best / 1e9
