"""Which torch device a model runs on."""

from __future__ import annotations

import os

from synthforge.errors import UserError


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


THREADS_VARIABLE = "SYNTHFORGE_THREADS"
THREAD_LIBRARY_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_budget() -> int:
    """Threads one step may use: $SYNTHFORGE_THREADS (a parallel build's workers share the CPUs), else
    $OMP_NUM_THREADS (the user's, or Ray's per-task CPUs), else every usable CPU."""
    for name in (THREADS_VARIABLE, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return usable_cpus()


def limit_threads(threads: int) -> None:
    """Cap the threads of this process's math libraries; call before numpy/torch/faiss are imported
    (OpenMP and BLAS read these once). Variables the user set stay as they are.

    Idle OpenMP threads also sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE): torch and faiss each bundle
    their own libgomp, and one library's spinning team takes the cores the other's working threads need. On a
    loaded 2-core machine a process alternating faiss and torch ran 3.7x slower (wall) without it."""
    os.environ[THREADS_VARIABLE] = str(threads)
    for name in THREAD_LIBRARY_VARIABLES:
        os.environ.setdefault(name, str(threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


ACCELERATOR_NODES = ("/dev/nvidia0", "/dev/kfd")  # the device files of NVIDIA and AMD (ROCm) GPU drivers


def accelerator_present(device: str = "auto") -> bool:
    """Whether model steps will run on a GPU, told without importing torch (a cached build stays light):
    an explicit cuda device, or on `auto` a GPU driver's device file."""
    if device != "auto":
        return device.startswith("cuda")
    return any(os.path.exists(node) for node in ACCELERATOR_NODES)


def pick_device(device: str = "auto") -> str:
    """`auto` is CUDA when present, else CPU; an explicit CUDA device must exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available", field="device")
    return device
