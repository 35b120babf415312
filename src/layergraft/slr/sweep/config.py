"""Every setting of a sweep in one frozen, typed object, checked once.

Why one object: a sweep is resumable, distributable and validated by generation, and each of
those must see the same settings. The CLI builds a :class:`SweepConfig`, the journal's header
records all of it, and ``--resume`` compares all of it (:meth:`SweepConfig.rows_key`), so a
setting cannot be forgotten by the resume check. The settings split in two: those that decide
which rows exist and what they mean (a changed one is refused on resume), and those that only
decide what is selected from the rows (the rule and its ratios, validation), which a resumed
sweep may change — ``results.json`` always records the ones it used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from layergraft.errors import InputError, RangeError
from layergraft.slr.proxy.ends import V_END_MODES

METHODS = ("slr", "soup", "both")
PROXIES = ("crc", "ppl")
RULES = ("paper", "format")
SEARCHES = ("exhaustive", "halving")
SWEEP_PARTS = ("attn", "mlp", "norms", "all")
PACKINGS = ("shared", "unshared", "padded")
#: the whole-model soups of ``--method soup|both``: alpha 0, 0.05, ..., 1
SOUP_ALPHAS = tuple(round(i * 0.05, 2) for i in range(21))
#: settings that only decide what is selected from the rows (free to change on resume)
SELECTION_FIELDS = frozenset(
    {"rule", "validity_ratio", "end_ratio", "diversity_key", "validate", "validate_samples"}
)


def parse_sweep_parts(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``--parts attn,mlp,all`` -> the variants a sweep scores, each once: one part of the
    layers or ``all`` (whole layers), in the order attn, mlp, norms, all."""
    words = [w.strip() for w in (text.split(",") if isinstance(text, str) else text) if w.strip()]
    bad = [w for w in words if w not in SWEEP_PARTS]
    if bad or not words:
        raise InputError(
            f"--parts {bad[0] if bad else text!r} is not a part; give attn, mlp, norms or all "
            "(several as attn,mlp,all: one sweep each)"
        )
    return tuple(p for p in SWEEP_PARTS if p in words)


def parse_alphas(text: str | tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """``--alphas 0.25,0.5,0.75,1`` -> the interval-soup weights, ascending, each in (0, 1]
    and given once (1 = the base layers themselves, SLR)."""
    if isinstance(text, str):
        words = [w.strip() for w in text.split(",") if w.strip()]
        try:
            values = [float(w) for w in words]
        except ValueError:
            raise InputError(
                f"--alphas {text!r} is not a list of numbers; give them separated by commas, "
                "e.g. 0.25,0.5,0.75,1"
            ) from None
    else:
        values = [float(v) for v in text]
    if not values:
        raise InputError("--alphas is empty; give weights in (0, 1], e.g. 0.25,0.5,0.75,1")
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if bad:
        raise InputError(
            f"--alphas {bad[0]:g} is outside (0, 1]; give weights in (0, 1] (alpha is the base's "
            "share of the interval's weights: 1 restores the base layers, 0 would be the post model)"
        )
    if len(set(values)) != len(values):
        dup = next(v for v in values if values.count(v) > 1)
        raise InputError(f"--alphas repeats {dup:g}; give each weight once")
    return tuple(sorted(values))


@dataclass(frozen=True)
class SweepConfig:
    """The settings of one sweep (module doc). Defaults are the CLI's."""

    proxy: str = "crc"
    prompts: str = "all"  # CRC: a bundled set name or a JSONL file
    data: str | None = None  # PPL: the text
    seqlen: int = 2048
    max_tokens: int | None = None
    method: str = "slr"
    parts: tuple[str, ...] = ("all",)
    alphas: tuple[float, ...] = (1.0,)
    min_len: int = 1
    max_len: int | None = None
    starts: tuple[int, ...] | None = None
    v_end: str = "strict"
    search: str = "exhaustive"
    prefix_reuse: bool = True
    packing: str = "shared"  # models.packing.LAYOUTS: shared prefixes, unshared, padded
    batch_size: int | None = None
    seed: int = 0
    rule: str | None = None  # None: "format" where the model has end markers, else "paper"
    validity_ratio: float = 0.9
    end_ratio: float = 0.9
    diversity_key: str = "H_norm"
    validate: int | None = None  # K candidates per family to generate from; None: no validation
    validate_samples: int = 4

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every setting's own rule, one line each (cross-checks with the models come later)."""
        choices = {
            "method": METHODS, "proxy": PROXIES, "rule": RULES, "search": SEARCHES,
            "v_end": V_END_MODES,
        }  # fmt: skip
        for name, allowed in choices.items():
            if name == "rule" and self.rule is None:
                continue
            if getattr(self, name) not in allowed:
                raise InputError(
                    f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one of "
                    f"{', '.join(allowed)}"
                )
        if self.packing not in PACKINGS:
            raise InputError(f"--packing {self.packing!r} is not one of {', '.join(PACKINGS)}")
        if self.diversity_key not in ("H", "H_norm"):
            raise InputError(f"diversity key {self.diversity_key!r} is not H or H_norm")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(
                f"--batch-size must be at least 1, not {self.batch_size}; leave it out for the default"
            )
        if self.validate is not None and self.validate < 1:
            raise InputError(
                f"--validate {self.validate} is not a number of candidates; give K >= 1 (the K "
                "most diverse eligible candidates of each family are generated from)"
            )
        if self.validate_samples < 1:
            raise InputError("--validate-samples must be at least 1")
        for name in ("validity_ratio", "end_ratio"):
            v = getattr(self, name)
            # NaN compares false with 0 (and then selects nothing): finite first
            if not math.isfinite(v) or v < 0:
                what = "is negative" if math.isfinite(v) else "is not a finite number"
                raise InputError(
                    f"--{name.replace('_', '-')} {v:g} {what}; give a ratio >= 0, e.g. 0.9"
                )
        if self.min_len < 1 or (self.max_len is not None and self.max_len < self.min_len):
            raise RangeError(
                f"interval lengths {self.min_len}..{self.max_len} are empty; need 1 <= --min-len <= --max-len"
            )
        parse_sweep_parts(self.parts)
        parse_alphas(self.alphas)
        if self.alphas != (1.0,) and self.method == "soup":
            raise InputError(
                "--alphas blends the layers of intervals, and --method soup scores whole-model "
                "soups only; remove --alphas or use --method both"
            )
        if self.alphas != (1.0,) and self.proxy == "ppl":
            # the PPL sweep selects among restored intervals (alpha 1): interval soups would be
            # scored and never chosen, or, with no alpha 1, nothing chosen at all
            raise InputError(
                "--alphas applies to --proxy crc; --proxy ppl selects the lowest-perplexity "
                "restored interval (alpha 1): remove --alphas, or sweep the soups with --proxy crc"
            )
        if self.proxy == "ppl":
            if self.data is None:
                raise InputError("--proxy ppl needs --data FILE (text, or JSONL with a text field)")
            if self.rule is not None:
                raise InputError(
                    f"--rule {self.rule} applies to --proxy crc; with --proxy ppl leave it out "
                    "(the lowest perplexity is selected)"
                )
        if self.rule == "format" and self.v_end == "off":
            raise InputError(
                "--rule format reads V_end, which --v-end off turns off; remove --v-end off or use "
                "--rule paper"
            )
        if self.validate is not None and self.proxy != "crc":
            raise InputError("--validate checks CRC candidates; use it with --proxy crc")
        if self.search == "halving" and self.proxy != "crc":
            raise InputError("--search halving needs --proxy crc (it bounds H_norm per prompt)")

    @property
    def soups(self) -> tuple[float, ...]:
        """The whole-model soup alphas scored (none with ``method="slr"``)."""
        return SOUP_ALPHAS if self.method != "slr" else ()

    @property
    def uses_v_end(self) -> bool:
        return self.proxy == "crc" and self.v_end != "off"

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["parts"], d["alphas"] = list(self.parts), list(self.alphas)
        d["starts"] = list(self.starts) if self.starts is not None else None
        return d

    def rows_key(self) -> dict[str, Any]:
        """The settings that decide which rows exist and what they mean (resume compares them)."""
        return {k: v for k, v in self.as_json().items() if k not in SELECTION_FIELDS}

    def selection(self) -> dict[str, Any]:
        """The settings that only decide what is selected."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in SELECTION_FIELDS}
