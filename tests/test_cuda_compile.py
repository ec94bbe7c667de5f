"""Checks of the GPU path that need no GPU.

* Every ``kernels/*.cu`` compiles with nvcc to PTX for sm_80 and sm_90 with every kernel
  template instantiated for every storage type (float, double, half_t, bf16_t), and ptxas
  assembles that PTX (inline PTX is only checked there) without spilling registers.
* The source NVRTC receives (each .cu with its header inlined by the backend's loader)
  compiles on its own, without an include path.
* The kernel sources are found in a source checkout and in an installed package.
* Without CuPy, the cupy backend still imports and says why it cannot run.

What CuPy itself adds when it compiles with NVRTC (its include folders, -ftz=true,
--device-as-default-execution-space, -arch=sm_90) is checked in test_nvrtc_compile.py.

nvcc is part of CI; where it is missing these tests fail (not skip) and say so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastrnn.backends.cupy import nvrtc as cb
from kernel_names import MANGLED_STORAGE, base_name, mangled_prefix

REPO = Path(__file__).resolve().parents[1]
KERNEL_DIR = REPO / "kernels"
ARCHS = ("sm_80", "sm_90")


def _tool(name: str) -> str:
    """Path of a CUDA toolkit program; fails the test, with what to do, if it is missing."""
    candidates = [shutil.which(name)]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates.append(os.path.join(root, "bin", name))
    nvcc = shutil.which("nvcc")
    if nvcc:                       # ptxas beside the real nvcc (nvcc may be a wrapper script)
        candidates.append(os.path.join(os.path.dirname(os.path.realpath(nvcc)), name))
        candidates += [os.path.join(d, name) for d in _nvcc_bin_dirs(nvcc)]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.fail(f"{name} not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): the CUDA "
                f"compile checks need the CUDA toolkit, which CI has; install it or put its "
                f"bin/ on PATH")


def _nvcc_bin_dirs(nvcc: str) -> list[str]:
    """bin/ folders named by an nvcc wrapper script (e.g. `exec /usr/local/cuda-13.0/bin/nvcc`)."""
    try:
        text = Path(nvcc).read_text(errors="replace")[:4096]
    except OSError:
        return []
    return [os.path.dirname(m) for m in re.findall(r"(/\S+/bin/nvcc)\b", text)]


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"{what} failed (exit {proc.returncode}):\n  {' '.join(cmd)}\n"
                                  f"{proc.stdout}{proc.stderr}")
    return proc


def _nvcc_ptx(src: Path, arch: str, out: Path, include: bool) -> str:
    cmd = [_tool("nvcc"), "-ptx", f"-arch={arch}", "-std=c++17", "-DFASTRNN_INSTANTIATE",
           "-Werror", "all-warnings", "-o", str(out), str(src)]
    if include:
        cmd[1:1] = ["-I", str(KERNEL_DIR)]
    _run(cmd, f"nvcc of {src.name} for {arch}")
    return out.read_text()


def _missing_instances(source: str, ptx: str) -> list[str]:
    entries = re.findall(r"\.entry\s+([A-Za-z0-9_]+)\s*\(", ptx)
    missing = []
    for kernel in cb.KERNELS[source]:
        for ctype in MANGLED_STORAGE:
            prefix = mangled_prefix(kernel, ctype)
            if not any(e.startswith(prefix) for e in entries):
                missing.append(f"{kernel}<{ctype}>")
    return missing


def test_kernel_table_matches_the_sources():
    """The backend's table of sources and kernels names exactly the files in kernels/."""
    on_disk = sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))
    assert on_disk == sorted(cb.KERNELS), f"kernels/*.cu {on_disk} vs KERNELS {sorted(cb.KERNELS)}"
    assert set(MANGLED_STORAGE) == set(cb.STORAGE_CTYPES.values())
    for source, kernels in cb.KERNELS.items():
        text = (KERNEL_DIR / f"{source}.cu").read_text()
        for k in kernels:
            name = base_name(k)
            assert re.search(rf"__global__\s+void\s+(__launch_bounds__\([^)]*\)\s+)?{name}\s*\(",
                             text), f"{name} not in {source}.cu"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(cb.KERNELS))
def test_source_compiles_to_ptx_for_every_storage_type(source, arch, tmp_path):
    ptx = _nvcc_ptx(KERNEL_DIR / f"{source}.cu", arch, tmp_path / f"{source}.ptx", include=True)
    assert re.search(rf"^\.target\s+{arch}\b", ptx, re.MULTILINE), f"PTX not for {arch}"
    missing = _missing_instances(source, ptx)
    assert not missing, f"{source}.cu for {arch}: no PTX entry for {', '.join(missing)}"
    # ptxas checks what nvcc's front end does not (inline PTX such as the f16 conversions)
    # and reports spills; the per-step kernels must keep everything in registers.
    proc = _run([_tool("ptxas"), f"-arch={arch}", "-v", "-o", str(tmp_path / f"{source}.cubin"),
                 str(tmp_path / f"{source}.ptx")], f"ptxas of {source}.ptx for {arch}")
    report = proc.stdout + proc.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills, f"no resource report from ptxas:\n{report}"
    assert all(a == "0" and b == "0" for a, b in spills), f"register spills:\n{report}"


@pytest.mark.parametrize("source", sorted(cb.KERNELS))
def test_inlined_source_compiles_without_an_include_path(source, tmp_path):
    """What cupy.RawModule hands to NVRTC is self-contained."""
    text = cb.kernel_source(source)
    assert '#include "' not in text
    src = tmp_path / f"{source}_inlined.cu"
    src.write_text(text)
    ptx = _nvcc_ptx(src, "sm_90", tmp_path / f"{source}_inlined.ptx", include=False)
    assert not _missing_instances(source, ptx)


def test_kernel_source_inlines_the_header_once():
    text = cb.kernel_source("persist")
    assert text.count("#define FASTRNN_COMMON_CUH") == 1
    assert text.count("#define FASTRNN_CELLS_CUH") == 1
    assert "persist_forward" in text and "step_time" in text and "LstmCell" in text
    with pytest.raises(ValueError, match="unknown kernel source"):
        cb.kernel_source("nope")


def _run_python(code: str, env_extra: dict | None = None, cwd: Path | None = None):
    env = dict(os.environ)
    env.pop("FASTRNN_BACKEND", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def test_backend_imports_without_cupy_and_says_why():
    """`import cupy` failing (simulated by a None entry in sys.modules) must not break
    `import fastrnn`; the backend reports a reason and the registry refuses it with it."""
    proc = _run_python("""
        import sys
        sys.modules["cupy"] = None           # any `import cupy` now raises ImportError
        import fastrnn
        from fastrnn.backends import get_backend, BackendUnavailableError
        from fastrnn.backends.cupy import CupyBackend
        reason = CupyBackend.unavailable_reason()
        assert isinstance(reason, str) and "CuPy is not installed" in reason, reason
        try:
            get_backend("cupy")
        except BackendUnavailableError as exc:
            assert "CuPy is not installed" in str(exc), exc
        else:
            raise SystemExit("get_backend('cupy') did not refuse")
        assert "cupy" not in fastrnn.available_backends()
        print("ok")
    """, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_kernel_sources_found_in_an_installed_package(tmp_path):
    """Installed wheel layout: fastrnn/kernels/ (pyproject force-includes kernels/ there)."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "fastrnn", site / "fastrnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(KERNEL_DIR, site / "fastrnn" / "kernels")
    proc = _run_python("""
        from pathlib import Path
        from fastrnn.backends.cupy import nvrtc as cb
        print(Path(str(cb.kernel_dir())).resolve())
        assert "step_forward" in cb.kernel_source("step")
    """, {"PYTHONPATH": str(site)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == (site / "fastrnn" / "kernels").resolve()


def test_missing_kernel_sources_are_reported(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(REPO / "fastrnn", site / "fastrnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = _run_python("""
        from fastrnn.backends.cupy import nvrtc as cb
        try:
            cb.kernel_dir()
        except FileNotFoundError as exc:
            assert "fastrnn/kernels" in str(exc) and "kernels/" in str(exc), exc
            print("ok")
    """, {"PYTHONPATH": str(site)}, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
