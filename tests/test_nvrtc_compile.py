"""The kernels through CuPy's own NVRTC compile path, as the cupy backend compiles them, with
no GPU: the check that tests/test_cuda_compile.py (nvcc) cannot make.

``cupy.RawModule`` hands its code, options and name expressions to
``cupy._core.core.compile_with_cache``, which adds CuPy's include folders and the CUDA
headers' folder, ``-ftz=true``, ``-arch=sm_<device>`` and
``--device-as-default-execution-space`` before NVRTC compiles. These tests run that same
function with the backend's own :func:`~fastrnn.backends.cupy.nvrtc.module_spec`, every
source, storage type and name expression, for sm_90 (H100 / H200). Only two steps that
need a GPU are replaced: the device query for the architecture (pinned to ``ARCH``) and
loading the binary into a CUDA context (kept as bytes instead); nothing is read from or
written to CuPy's disk cache.

Needs CuPy and the NVRTC library (``pip install -e ".[gpu-build]"``) and the CUDA headers
(the CUDA toolkit); skipped, with the reason, where one is missing.
"""

from __future__ import annotations

import io
import re
import types

import pytest

from fastrnn.backends.cupy import nvrtc
from fastrnn.backends.cupy.lib import IMPORT_ERROR, cupy
from kernel_names import MANGLED_STORAGE, mangled_prefix

ARCH = "90"
CASES = [(source, ctype) for source in sorted(nvrtc.KERNELS) for ctype in MANGLED_STORAGE]
# float32 arithmetic in PTX: every one of these must carry .ftz under CuPy's -ftz=true
F32_ARITHMETIC = re.compile(
    r"^\s*(?:@!?%p\d+\s+)?((?:add|sub|mul|fma|div|rcp|sqrt|rsqrt|ex2|lg2|abs|neg|min|max"
    r"|setp)\.[a-z0-9.]*f32)\b", re.MULTILINE)

if cupy is None:
    pytest.skip(f"CuPy cannot be imported ({IMPORT_ERROR}); pip install -e \".[gpu-build]\" "
                f"to run CuPy's compile path here", allow_module_level=True)

from cupy._core import core  # noqa: E402
from cupy.cuda import compiler, function  # noqa: E402

try:
    compiler._get_nvrtc_version()
except Exception as _exc:  # noqa: BLE001 - libnvrtc missing: no compile path to test
    pytest.skip(f"CuPy cannot load NVRTC ({type(_exc).__name__}: {_exc}); pip install "
                f"nvidia-cuda-nvrtc (part of the gpu-build extra)", allow_module_level=True)
try:
    nvrtc.compiler_options()
except RuntimeError as _exc:
    pytest.skip(f"CuPy cannot find the CUDA headers here ({_exc})", allow_module_level=True)


class _Kept(function.Module):
    """A ``cupy.cuda.function.Module`` that keeps the compiled image and the name mapping
    instead of loading them into a CUDA context (there is none without a GPU)."""

    def _set_mapping(self, mapping):
        self.names = dict(mapping or {})

    def load(self, image):
        self.image = bytes(image)


def _cubin_arch(arch=None):
    """CuPy's choice for an sm_<arch> device whose NVRTC supports it: a cubin."""
    return f"-arch=sm_{arch}", "cubin"


def _ptx_arch(arch=None):
    """CuPy's choice with CUPY_COMPILE_WITH_PTX=1: PTX for compute_<arch>."""
    return f"-arch=compute_{arch}", "ptx"


def compile_like_rawmodule(source: str, ctype: str, arch_option=_cubin_arch) -> dict:
    """Compile ``kernels/<source>.cu`` for ``ctype`` exactly as ``cupy.RawModule`` would on
    an sm_90 device. Returns image (bytes), names (expression -> mangled name), options
    (those of the final NVRTC compile) and log (NVRTC's messages)."""
    code, options, names = nvrtc.module_spec(source, ctype)
    seen: list[tuple] = []
    real_compile = compiler._NVRTCProgram.compile

    def recording_compile(program, opts=(), log_stream=None):
        seen.append(tuple(opts))
        return real_compile(program, opts, log_stream)

    log = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUPY_CACHE_IN_MEMORY", "1")
        mp.setattr(compiler, "_get_arch_for_options_for_nvrtc", arch_option)
        mp.setattr(compiler, "function", types.SimpleNamespace(Module=_Kept))
        mp.setattr(compiler._NVRTCProgram, "compile", recording_compile)
        module = core.compile_with_cache(
            code, options, arch=ARCH, prepend_cupy_headers=False, backend="nvrtc",
            translate_cucomplex=False, enable_cooperative_groups=False,
            name_expressions=names, log_stream=log, jitify=False)
    return {"image": module.image, "names": module.names, "options": seen[-1],
            "log": log.getvalue()}


@pytest.mark.parametrize("source,ctype", CASES)
def test_every_kernel_compiles_through_cupys_nvrtc_path(source, ctype):
    got = compile_like_rawmodule(source, ctype)
    assert got["image"][:4] == b"\x7fELF", "NVRTC did not return a cubin"
    assert not got["log"].strip(), f"NVRTC warnings for {source}.cu <{ctype}>:\n{got['log']}"
    for kernel in nvrtc.KERNELS[source]:
        expr = nvrtc.name_expression(kernel, ctype)
        mangled = got["names"].get(expr)
        assert mangled, f"no mangled name for {expr}"
        assert mangled.startswith(mangled_prefix(kernel, ctype)), mangled
        assert mangled.encode() in got["image"], f"{mangled} ({expr}) is not in the cubin"
    options = got["options"]
    for flag in ("-ftz=true", f"-arch=sm_{ARCH}", "--device-as-default-execution-space",
                 *nvrtc.NVRTC_OPTIONS):
        assert options.count(flag) == 1, f"{flag} {options.count(flag)} times in {options}"
    assert sum(o.startswith(("-std=", "--std=")) for o in options) == 1, options


def test_compiler_options_are_those_cupy_assembles():
    """The probe's compiler_options() is CuPy's own assembly around NVRTC_OPTIONS: ours, with
    include folders added, the CUDA headers' among them."""
    options = nvrtc.compiler_options()
    assert options == tuple(core.assemble_cupy_compiler_options(nvrtc.NVRTC_OPTIONS))
    assert all(o in options for o in nvrtc.NVRTC_OPTIONS)
    assert any(o.startswith("-I") for o in options), options


@pytest.mark.parametrize("ctype", ["float", "half_t", "bf16_t"])
def test_float32_arithmetic_flushes_subnormals(ctype):
    """The documented convention (backend docstring): with CuPy's -ftz=true every float32
    operation of the kernels flushes subnormals, for float storage and 16-bit storage."""
    ptx = compile_like_rawmodule("step", ctype, _ptx_arch)["image"].decode()
    ops = F32_ARITHMETIC.findall(ptx)
    assert len(ops) > 100, f"only {len(ops)} float32 operations found in the PTX"
    plain = sorted({op for op in ops if ".ftz" not in op})
    assert not plain, f"float32 operations without .ftz: {plain}"


def test_unknown_storage_type_is_refused():
    with pytest.raises(ValueError, match="ctype"):
        nvrtc.module_spec("step", "int")


# --------------------------------------------------------------------------- the probe

def _one_device(monkeypatch):
    """The probe's checks before the compiler's pass: one device, cuBLAS's bindings there
    (this machine may lack the cuBLAS library, which the probe checks first)."""
    from fastrnn.backends.cupy import backend
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    monkeypatch.setattr(backend, "cublas_bindings", lambda: types.SimpleNamespace(gemmEx=None))


def test_probe_reports_missing_cuda_headers(monkeypatch):
    """Where CuPy finds no CUDA headers, every compile fails: the probe must say so rather
    than call the backend available (issue 15, finding 4)."""
    from fastrnn.backends.cupy import CupyBackend

    def no_headers(options):
        raise RuntimeError("Failed to find CUDA headers. Please install CUDA toolkit headers")

    _one_device(monkeypatch)
    monkeypatch.setattr(core, "assemble_cupy_compiler_options", no_headers)
    reason = CupyBackend.unavailable_reason()
    assert reason is not None and "CUDA headers" in reason and "CUDA_PATH" in reason, reason


def test_probe_compiles_and_loads_a_kernel(monkeypatch):
    """With the device count faked on a machine without a GPU, NVRTC and the headers are
    fine, so the probe gets as far as compiling and loading a module, and reports that."""
    try:
        real = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no driver: the case this test needs
        real = 0
    if real:
        pytest.skip("a GPU is present: the probe succeeds here (tests/test_gpu.py runs it)")
    from fastrnn.backends.cupy import CupyBackend, nvrtc as nv
    _one_device(monkeypatch)
    monkeypatch.setattr(nv, "_modules", {})
    monkeypatch.setattr(nv, "_functions", {})
    monkeypatch.setattr(cupy.cuda.runtime, "getDevice", lambda: 0)
    reason = CupyBackend.unavailable_reason()
    assert reason is not None and "compile and load" in reason, reason

