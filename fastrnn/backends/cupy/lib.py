"""CuPy itself, imported once for the whole backend; never fails.

``cupy`` is None where CuPy cannot be imported, and ``IMPORT_ERROR`` says why (no package,
or a broken CUDA install).
"""

try:
    import cupy
    IMPORT_ERROR: Exception | None = None
except Exception as _exc:  # noqa: BLE001 - ImportError, or a broken CUDA install
    cupy = None
    IMPORT_ERROR = _exc

__all__ = ["cupy", "IMPORT_ERROR"]
