"""What the compilers call the kernels of ``kernels/``: their Itanium-mangled names.

Shared by the compile checks (test_cuda_compile.py: nvcc's PTX entries; test_nvrtc_compile.py:
the names NVRTC resolves for CuPy) so both look for the same symbols.
"""

from __future__ import annotations

from fastrnn.backends.cupy import nvrtc

# C++ storage type -> its mangled template argument
MANGLED_STORAGE = {"float": "f", "double": "d", "half_t": "6half_t", "bf16_t": "6bf16_t"}
# cell type of kernels/cells.cuh -> its mangled template argument (the two Elman cells are
# typedefs of RnnCell<bool>)
MANGLED_CELLS = {"RnnTanh": "7RnnCellILb0EE", "RnnRelu": "7RnnCellILb1EE",
                 "LstmCell": "8LstmCell", "GruCell": "7GruCell"}


def base_name(kernel: str) -> str:
    """'step_forward<LstmCell>' -> 'step_forward', 'digest_arrays()' -> 'digest_arrays'."""
    return kernel.partition("<")[0].partition("(")[0]


def mangled_prefix(kernel: str, ctype: str) -> str:
    """The start of the mangled name of ``kernel`` (a name of nvrtc.KERNELS) for ``ctype``:
    everything up to the end of its template arguments (its name, for a plain function)."""
    name = base_name(kernel)
    if kernel.endswith("()"):
        return f"_Z{len(name)}{name}"
    cells = kernel[len(name):].strip("<>")
    args = "".join(MANGLED_CELLS[c.strip()] for c in cells.split(",") if c.strip())
    return f"_Z{len(name)}{name}I{args}{MANGLED_STORAGE[ctype]}E"


assert set(MANGLED_CELLS) == set(nvrtc.CELL_TYPES.values())
