"""The few torch helpers IO needs, imported lazily so pure-IO paths never load torch."""

from __future__ import annotations

from typing import Any

from layergraft.checkpoint.format import TORCH_DTYPE_NAMES

_TO_ST = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "float16": "F16",
    "bfloat16": "BF16",
    "int32": "I32",
    "uint32": "U32",
    "float32": "F32",
    "int64": "I64",
    "uint64": "U64",
    "float64": "F64",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3",
}


def safetensors_dtype(dtype: Any) -> str:
    """torch dtype -> safetensors dtype string."""
    name = str(dtype).removeprefix("torch.")
    try:
        return _TO_ST[name]
    except KeyError as e:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors") from e


def torch_dtype(st_dtype: str) -> Any:
    """safetensors dtype string -> torch dtype."""
    import torch

    return getattr(torch, TORCH_DTYPE_NAMES[st_dtype])


def tensor_bytes(t: Any) -> memoryview:
    """The raw little-endian bytes of a CPU-contiguous copy of ``t`` (any dtype, bf16 too)."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())
