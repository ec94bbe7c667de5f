"""Every tunable of fastrnn in one place.

Each setting is an attribute of this module. Those with an environment variable take its
value when fastrnn is first imported; after that, assign the attribute
(``fastrnn.config.workspace_mb = 64``) — the code reads it at every use, and tests patch
it with ``monkeypatch.setattr``. Nothing else in the package reads ``FASTRNN_*``
variables.
"""

from __future__ import annotations

import os


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {raw!r}") from None


def _env_spin() -> int | None:
    raw = os.environ.get("FASTRNN_OPENMP_SPIN", "").strip()
    if raw.lower() == "default":
        return None
    return int(_env_float("FASTRNN_OPENMP_SPIN", _DEFAULT_OPENMP_SPIN))


_DEFAULT_OPENMP_SPIN = 0                # passive: sleep as soon as idle (bench/README.md)


#: Backend that ``backend="auto"`` picks for NumPy inputs; "auto" lets fastrnn choose
#: (numba where it runs, else numpy; CuPy arrays always go to cupy). ``FASTRNN_BACKEND``.
backend: str = os.environ.get("FASTRNN_BACKEND", "").strip() or "auto"

#: Idle buffers the numba backend keeps for reuse, in MiB. ``FASTRNN_WORKSPACE_MB``.
workspace_mb: float = _env_float("FASTRNN_WORKSPACE_MB", 256.0)

#: Arrays below this many bytes never enter the workspace pool: malloc's own free lists
#: serve them as well.
workspace_min_bytes: int = 1 << 18

#: The numba kernels give a thread at least this many batch rows (sequences run
#: independently, so a batch splits into chunks that each run the whole time loop).
rows_per_thread: int = 4

#: A numba call splits its work over threads only where each gets at least this many
#: FLOPs: waking a sleeping thread costs tens of microseconds, more than a small step.
min_flops_per_thread: float = 4e6

#: Rows per thread chunk, fixed; None chooses from the batch and the thread count.
#: For tests that must see a batch split whatever the machine.
chunk_rows: int | None = None

#: How long the idle threads of numba's GNU OpenMP pool spin before they sleep (its
#: ``GOMP_SPINCOUNT``), set when fastrnn starts that pool unless ``OMP_WAIT_POLICY`` or
#: ``GOMP_SPINCOUNT`` is in the environment; None leaves GNU OpenMP's default.
#: ``FASTRNN_OPENMP_SPIN``.
openmp_spin: int | None = _env_spin()

#: Let float32 products on the GPU use TF32 tensor cores (10-bit mantissas), as
#: ``torch.backends.cudnn.allow_tf32`` does for torch.nn's RNNs; off (strict float32) by
#: default. ``fastrnn.forward(..., allow_tf32=...)`` decides per call; fastrnn.torch follows
#: torch's own switch. ``FASTRNN_ALLOW_TF32``.
allow_tf32: bool = os.environ.get("FASTRNN_ALLOW_TF32", "0").strip().lower() in ("1", "true",
                                                                                 "yes", "on")

#: Persistent GPU kernels (cupy backend: the whole time loop in one launch): "auto" where
#: the planner's estimate beats the per-step path, "1" wherever a plan fits the device,
#: "0" never (fastrnn/backends/cupy/persistent.py). ``FASTRNN_CUPY_PERSISTENT``.
cupy_persistent: str = os.environ.get("FASTRNN_CUPY_PERSISTENT", "auto").strip().lower()

#: Force the persistent kernels' split: (batch groups, blocks per group), or None to let
#: the planner choose. For measuring the planner's choices (bench/gpu_persist_sweep.py).
cupy_persistent_split: tuple[int, int] | None = None

#: A tape checksums its inputs so that backward refuses arrays changed in place: whole
#: arrays up to this many elements, larger ones through ``tape_digest_samples`` evenly
#: spaced elements.
tape_digest_full: int = 1 << 16
tape_digest_samples: int = 4096

#: How long OpenBLAS's idle threads spin after a call (its ``OPENBLAS_THREAD_TIMEOUT``, in
#: units of 2^n cycles); set for the process when NumPy is not yet imported.
openblas_thread_timeout: str = "20"


def _env_notice() -> float | None:
    raw = os.environ.get("FASTRNN_COMPILE_NOTICE_S", "1").strip().lower()
    return None if raw in ("", "off", "none", "no") else float(raw)


#: Seconds a first call of a numba kernel may compile before a line on stderr says so
#: (fastrnn/backends/numba/first_use.py); None: never. ``FASTRNN_COMPILE_NOTICE_S``
#: ("off" for none).
compile_notice_s: float | None = _env_notice()


def workspace_max_bytes() -> int:
    """:data:`workspace_mb` in bytes."""
    return int(workspace_mb * (1 << 20))
