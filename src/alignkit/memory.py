"""Process memory around model loading: checkpoints read without mmap, freed heap returned to the system.

A quantized load on CPU is the run whose point is memory; these keep its peak RSS near what the 4-bit
model holds (bench/memory.py measures each).
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import torch
import transformers.modeling_utils as modeling_utils


@contextlib.contextmanager
def read_checkpoints_without_mmap(enabled: bool = True) -> Iterator[None]:
    """Within the block, transformers reads safetensors tensors with pread instead of mapping the file.

    A quantized load reads every full-precision weight once and keeps only its 4-bit copy, but the
    pages of a memory-mapped file stay resident (and count in the process's RSS) for as long as the
    file is mapped, i.e. the whole load: a 110M float32 checkpoint adds ~0.4 GB to the peak of a run
    whose model then holds ~0.06 GB. pread reads one tensor at a time into memory that is freed once
    it is quantized. transformers picks pread itself on Windows and MPS but has no switch for it
    elsewhere, so this swaps the `safe_open` its loader calls; when that name or safetensors'
    `backend` argument is missing (another version) the block changes nothing.
    """
    original = getattr(modeling_utils, "safe_open", None)
    if not enabled or original is None or not _takes_backend(original):
        yield
        return

    def safe_open_pread(filename: Any, framework: str, device: Any = "cpu", backend: str = "mmap") -> Any:
        backend = "pread" if backend == "mmap" and str(device) == "cpu" else backend
        return original(filename, framework=framework, device=device, backend=backend)

    modeling_utils.safe_open = safe_open_pread
    try:
        yield
    finally:
        modeling_utils.safe_open = original


def _takes_backend(fn: Any) -> bool:
    try:
        return "backend" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a compiled function without a text signature
        return False


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def return_freed_memory_to_os() -> bool:
    """On glibc, hand freed heap pages back now and keep later large blocks returnable; False elsewhere.

    glibc serves blocks above its mmap threshold with their own mappings, which go back to the system
    when freed, but it raises that threshold to the size of each large block freed (up to 32 MiB), so
    after quantization has freed the first full-precision weight, later weights and every activation of
    the same size come from the heap, whose free middle cannot be returned. On a 110M QLoRA run that
    kept ~0.2 GB of freed memory in the peak RSS (bench/memory.py: 988 -> 775 MB). Fixing the threshold
    (mallopt, which also stops its growth) costs a page fault per large allocation, so it is done for
    quantized loads on CPU only: the runs whose point is memory. malloc_trim then releases what is free.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # musl and others
        return False
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    malloc_trim(0)
    return True


def release_checkpoint_mapping(model: Any) -> int:
    """Copy the CPU tensors that still view the memory-mapped checkpoint; returns how many were copied.

    On CPU a quantized load keeps the unquantized tensors (norms, embeddings, head) as views of the
    safetensors mmap, so every page of the full-precision file that quantization read stays resident
    (~4 bytes per parameter, 0.4 GB for a 110M model). Copies of the few small tensors let it go.
    """
    copied = 0
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for value in tensors.values():
                if value is None or value.device.type != "cpu" or type(value).__name__ == "Params4bit":
                    continue
                if value.untyped_storage().nbytes() and not value.untyped_storage().resizable():
                    with torch.no_grad():
                        value.data = value.data.clone()
                    copied += 1
    return copied
