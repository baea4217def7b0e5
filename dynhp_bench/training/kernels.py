"""The fast path's fused CPU loops: `kernels.c`, compiled at first use with the system C compiler.

`load()` compiles the C file once per machine into a shared library under the user's cache folder
(``$XDG_CACHE_HOME/dynhp-bench/kernels``, named by a hash of the source, the compiler, its flags and the CPU,
since ``-march=native`` code runs only where it was built) and loads it with `ctypes`. Where no compiler is
found or it fails, `load()` returns None with the reason in `unavailable_reason()`, and `fastpath.FastStep`
computes the same step with PyTorch operations (``--step fast_torch`` asks for that path outright).

Compilation takes about a second; parallel workers that compile at once each write their own temporary file
and rename it into place, so none loads a half-written library.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.c")
# -ffp-contract=off: no fused multiply-adds, so that each product and sum rounds as PyTorch's kernels round it.
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-ffp-contract=off", "-std=c11")
LINK_FLAGS = ("-shared", "-fPIC", "-lm")
COMPILE_TIMEOUT_S = 120
_REASON: list[str] = []


class Kernels:
    """The loaded library's functions, typed; arguments are tensors' data pointers (0 for NULL)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        pointer, length, real = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
        self.weight_pass = library.dynhp_weight_pass
        self.weight_pass.argtypes = [pointer] * 5 + [real] + [pointer] * 3 + [length] * 2
        self.weight_pass.restype = None
        self.tap_add = library.dynhp_tap_add
        self.tap_add.argtypes = [pointer] * 4 + [length] * 3
        self.tap_add.restype = None
        self.variance_l1 = library.dynhp_variance_l1
        self.variance_l1.argtypes = [pointer] * 4 + [length] * 2
        self.variance_l1.restype = None
        self.gates_draw = library.dynhp_gates_draw
        self.gates_draw.argtypes = [pointer] * 2 + [length] + [pointer] * 4 + [real] * 5
        self.gates_draw.restype = None
        self.gates_backward = library.dynhp_gates_backward
        self.gates_backward.argtypes = [pointer] * 7 + [length] + [real] * 2 + [pointer] * 3 + [length, pointer]
        self.gates_backward.restype = None


def _compiler() -> str | None:
    name = os.environ.get("CC") or "cc"
    return shutil.which(name) or shutil.which("gcc") or shutil.which("clang")


def _cpu_identity() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags (Linux), else the platform's name."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines)))


def cache_dir() -> Path:
    """Where compiled libraries are kept."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dynhp-bench" / "kernels"


def _build(compiler: str) -> Path:
    """The compiled library for this source, compiler and CPU, compiled now where not already cached."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), compiler, version, " ".join(FLAGS + LINK_FLAGS), _cpu_identity()]).encode()
    ).hexdigest()[:16]
    folder = cache_dir()
    library = folder / f"kernels-{key}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=library.stem, suffix=".so.tmp", dir=folder)
    os.close(handle)
    try:
        done = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", temporary, *LINK_FLAGS],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
        )
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise OSError(f"{Path(compiler).name} exited with {done.returncode}: {first}")
        os.replace(temporary, library)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return library


@functools.cache
def load() -> Kernels | None:
    """The compiled kernels, or None where they cannot be had here (the reason: `unavailable_reason()`)."""
    if platform.system() == "Windows":
        _REASON.append("compiled kernels are built on Linux and macOS only")
        return None
    compiler = _compiler()
    if compiler is None:
        _REASON.append("no C compiler found ($CC, cc, gcc or clang)")
        return None
    try:
        return Kernels(ctypes.CDLL(str(_build(compiler))))
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        _REASON.append(f"the C kernels could not be built: {error}")
        return None


def wanted(step: str, device: torch.device) -> bool:
    """Whether a run's step asks for the compiled loops: ``--step fast`` on the CPU (the fast path covers no other
    device, and ``fast_torch`` and ``autograd`` do without them)."""
    return step == "fast" and device.type == "cpu"


def for_step(step: str, device: torch.device) -> Kernels | None:
    """The compiled loops where the step asks for them and they can be had here, else None."""
    return load() if wanted(step, device) else None


def unavailable_reason() -> str | None:
    """Why `load()` returned None (None when it has not, or has not been called)."""
    return _REASON[-1] if _REASON else None


def address(tensor: torch.Tensor | None) -> int:
    """A tensor's data pointer for a kernel argument; 0 (NULL) for None."""
    return 0 if tensor is None else tensor.data_ptr()
