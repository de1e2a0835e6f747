"""
The machine a run uses: CUDA, then Apple MPS, then the CPU, fp32 everywhere; what a record
calls it. Nothing here touches CUDA where there is none.
"""

import os
import platform

import torch


def get_device(name, refuse=ValueError):
    """The device name asks for (auto: cuda, then mps, then cpu); raises refuse(message) where
    there is none (the flags pass their UserError: one line to the user)."""
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(mps and mps.is_available())}
    if name == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if name not in available:
        raise refuse(f"unknown device {name!r}; choose from auto, cpu, cuda, mps")
    if not available[name]:
        raise refuse(f"device {name} is not available on this machine")
    return name


def cpu_threads():
    """The CPU threads a run uses unless --threads says: under Slurm those of its allocation
    (SLURM_CPUS_PER_TASK; torch's own count can be the whole node's), else torch's default."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return torch.get_num_threads()


def sync(device):
    """Wait for the device's queued work, so that a clock read after it is true."""
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def hardware(device):
    """The device's name as a record states it, with the CPU threads the run used."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    cpu = names[0] if names else cpu
    mps = " + Apple MPS" if device == "mps" else ""
    return f"{cpu} ({torch.get_num_threads()} threads){mps}"
