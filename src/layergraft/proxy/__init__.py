"""Proxy tasks for choosing a restoration range: CRC (exact estimator), sweeps, runners."""

from layergraft.proxy.crc import (
    CrcItem,
    CrcPrompt,
    CrcResult,
    bundled_crc_sets,
    crc_exact,
    crc_sampled,
    load_crc_prompts,
)

__all__ = [
    "CrcItem",
    "CrcPrompt",
    "CrcResult",
    "bundled_crc_sets",
    "crc_exact",
    "crc_sampled",
    "load_crc_prompts",
]
