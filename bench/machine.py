"""Machine probes: what the bench ran on (CPU, instruction-set cap, libraries, GPU), its
measured matmul peak and memory bandwidth, and the meters the model phases use (peak RSS of
a block, wall time per model part). May import indexer (quant) and torch/faiss lazily."""

from __future__ import annotations

import gc
import os
import platform
import socket
import threading
import time
from typing import Any

import numpy as np

from bench.common import median, rounded


def rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class RssSampler:
    """Peak resident memory of this process during a ``with`` block (sampled every 20 ms)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> RssSampler:
        gc.collect()
        self.start = self.peak = rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    def as_dict(self) -> dict:
        mib = 1024 * 1024
        return {
            "rss_start_mib": round(self.start / mib, 1),
            "rss_peak_mib": round(self.peak / mib, 1),
            "rss_growth_mib": round((self.peak - self.start) / mib, 1),
        }


class ModuleTimer:
    """Wall time spent inside given modules (forward hooks), e.g. vision tower vs decoder."""

    def __init__(self, modules: dict[str, Any], device: str = "cpu") -> None:
        self.device = device
        self.seconds = {name: 0.0 for name in modules}
        self._handles = []
        for name, mod in modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._pre(name)))
            self._handles.append(mod.register_forward_hook(self._post(name)))
        self._t0: dict[str, float] = {}

    def _pre(self, name: str):
        def hook(*_a: Any) -> None:
            sync(self.device)
            self._t0[name] = time.perf_counter()

        return hook

    def _post(self, name: str):
        def hook(*_a: Any) -> None:
            sync(self.device)
            self.seconds[name] += time.perf_counter() - self._t0.pop(name)

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def machine_info() -> dict:
    import faiss
    import torch
    import transformers

    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "avx_vnni",
    ]
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except Exception:  # pragma: no cover
        mem = 0
    from indexer.model.runtime import cpu_features as quant

    level, caps = quant.isa_cap()
    effective = quant.cap_flags(flags, level)
    return {
        "host": socket.gethostname(),
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags": {f: f in flags for f in wanted},
        # what the kernels may use: the real flags less any instruction-set cap (--isa)
        "isa_cap": {
            "emulated": level,
            "env": caps,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "cpu_flags_effective": {f: f in effective for f in wanted},
            "note": "the CPU is the one named above with its instruction set capped by these "
            "variables; its memory bandwidth, caches and clock are its own, not those of a "
            "CPU of the capped class"
            if level
            else "no cap: the CPU's own instruction set",
        },
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "faiss": getattr(faiss, "__version__", "?"),
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "quantized_engine": torch.backends.quantized.engine,
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_info(device: str) -> dict:
    """The accelerator the model phases run on (name, memory), or the CPU."""
    import torch

    if not device.startswith("cuda"):
        return {"device": device}
    props = torch.cuda.get_device_properties(torch.device(device))
    return {
        "device": device,
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "bf16": bool(torch.cuda.is_bf16_supported()),
        "attention": "sdpa (torch fused kernels: flash / memory-efficient)",
    }


def native_bf16() -> bool:
    """Whether this CPU (after any ISA cap, see ``--isa``) has bf16 matmul instructions.

    Why: without them torch's bf16 matmul falls back to a scalar loop; its "peak" is not a
    peak of anything the app runs (the auto dtype is float32 there), and at n=1024 it took
    over 20 minutes under the AVX2 caps.
    """
    import torch

    from indexer.model.runtime import cpu_features as quant

    return torch.backends.mkldnn.is_available() and quant.has_native_bf16(quant.cpu_flags())


def matmul_peak(n: int, dtypes: list[str], reps: int = 3, device: str = "cpu") -> dict:
    """Measured dense matmul GFLOP/s (n x n x n, median of ``reps``) per dtype."""
    import torch

    out = {}
    for name in dtypes:
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
        a = torch.randn(n, n).to(device=device, dtype=dt)
        b = torch.randn(n, n).to(device=device, dtype=dt)
        a @ b  # warm-up
        sync(device)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - t)
        out[name] = {
            "n": n,
            "gflops": rounded(2 * n**3 / median(times) / 1e9, 1),
            "gflops_best": rounded(2 * n**3 / min(times) / 1e9, 1),
        }
        del a, b
    return out


def memory_bandwidth(mib: int = 512, reps: int = 5, device: str = "cpu") -> dict:
    """Measured read bandwidth (GB/s): summing a ``mib`` MiB float32 tensor, median of reps.

    A single text query reads every decoder weight once, so weight bytes / this figure is
    the floor of its latency (the "memory floor" the query rows report).
    """
    import torch

    x = torch.ones(mib * 2**20 // 4, device=device)
    x.sum()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        sync(device)
        times.append(time.perf_counter() - t)
    nbytes = x.numel() * 4
    del x
    return {
        "mib": mib,
        "gb_per_s": rounded(nbytes / median(times) / 1e9, 2),
        "gb_per_s_best": rounded(nbytes / min(times) / 1e9, 2),
    }


def decoder_weight_bytes(emb: Any) -> int:
    """Bytes of the decoder's linear weights (what one query reads), in their current dtype."""
    import torch

    total = 0
    for mod in emb.text_model.modules():
        if isinstance(mod, torch.nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
            if mod.bias is not None:
                total += mod.bias.numel() * mod.bias.element_size()
    return total


def check_device(device: str, error: Any) -> str:
    """``device`` normalised ("cpu", "cuda", "cuda:1"); ``error(message)`` if it is not
    usable here (argparse's ``error`` exits with status 2 and the message)."""
    import torch

    name = (device or "cpu").strip().lower()
    kind = name.split(":", 1)[0]
    if kind == "cpu" and name == "cpu":
        return "cpu"
    if kind != "cuda":
        error(f"--device must be cpu or cuda[:N], not {device!r}")
    if not torch.cuda.is_available():
        error(
            f"--device {device}: no CUDA GPU is usable here (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )
    if ":" in name:
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            error(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)")
    return name
