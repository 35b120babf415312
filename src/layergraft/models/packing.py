"""Packed batches: many prompts and their continuations in a few rows, as token trees.

Why: a sweep runs the same batch of prompts through hundreds of hybrids, so every token
position it computes without need is paid hundreds of times. Left-padding a batch computes
the pad slots, every prompt recomputes the chat template's shared opening, and scoring what
follows a reply's first token (``V_end``) would need one more sequence per continuation. A
packed batch computes each distinct token prefix once: the prompts of a row form a prefix
tree (a trie), each requested continuation hangs below its prompt's last token, and an
explicit attention mask lets every token see exactly its ancestors. Positions are depths in
the tree, so a token has the position, and sees the keys, it would have in its own sequence
alone; the numbers equal those of one plain forward per sequence (tests check it on every
family against transformers' own forward).

This module is pure data (token ids to tensors); :mod:`layergraft.models.runner` gives each
decoder layer the mask for its attention type (full, or a sliding window counted in
positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: attention cost of one (query, key) pair relative to one token's linear layers, for a
#: model of unknown shape (2 * hidden / parameters per layer is about 3e-4 at 135M-270M)
DEFAULT_ATTENTION_RATIO = 3e-4


@dataclass(frozen=True)
class PackItem:
    """One prompt to pack: its token ids and the continuation paths to score after it
    (``((t,), (t, q))`` asks for the positions after ``prompt + t`` and ``prompt + t + q``)."""

    tokens: tuple[int, ...]
    branches: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class PackStats:
    """What a packed batch computes, in token positions (for the plan and the benchmark)."""

    rows: int
    width: int
    computed: int  # rows x width: every position a layer computes
    real: int  # positions holding a token (computed - padding)
    unshared: int  # what one sequence per prompt and per continuation path would hold
    prompt_tokens: int  # the prompts' own tokens, each prompt counted whole
    continuation_tokens: int  # tokens of the continuation paths, each path counted whole

    @property
    def padded(self) -> int:
        return self.computed - self.real

    @property
    def padding_share(self) -> float:
        return self.padded / self.computed if self.computed else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "width": self.width,
            "computed_positions": self.computed,
            "real_positions": self.real,
            "padded_positions": self.padded,
            "padding_share": round(self.padding_share, 4),
            "unshared_positions": self.unshared,
            "prompt_tokens": self.prompt_tokens,
            "continuation_tokens": self.continuation_tokens,
        }


@dataclass
class Packed:
    """Rows of token trees: ``input_ids``/``position_ids``/``parent``/``real`` are
    ``[rows, width]`` tensors (``parent`` -1 at roots and padding). ``answer[k]`` is the
    ``(row, col)`` of item ``k``'s last prompt token (where its next token is read), and
    ``branch[k][path]`` that of the last token of one of its continuation paths."""

    input_ids: Any
    position_ids: Any
    parent: Any
    real: Any
    answer: list[tuple[int, int]]
    branch: list[dict[tuple[int, ...], tuple[int, int]]]
    stats: PackStats
    _allowed: dict[int | None, Any] = field(default_factory=dict, repr=False)

    def to(self, device: Any) -> Packed:
        """The same batch with its tensors on ``device`` (masks are built there)."""
        if device is None or self.input_ids.device == device:
            return self
        return Packed(
            self.input_ids.to(device), self.position_ids.to(device), self.parent.to(device),
            self.real.to(device), self.answer, self.branch, self.stats,
        )  # fmt: skip

    def allowed(self, window: int | None = None) -> Any:
        """``[rows, width, width]`` bool: query ``i`` may attend to key ``j`` (``j`` is ``i``
        or an ancestor of ``i``; with ``window``, also fewer than ``window`` positions back,
        as transformers' sliding-window mask has it). A padding slot sees only itself, so no
        row of the mask is empty."""
        if window not in self._allowed:
            import torch

            if None not in self._allowed:
                rows, width = self.parent.shape
                anc = torch.zeros((rows, width, width), dtype=torch.bool, device=self.parent.device)
                idx = torch.arange(rows, device=self.parent.device)
                for i in range(width):  # parents come before their children in a row
                    p = self.parent[:, i]
                    has = p >= 0
                    if bool(has.any()):
                        anc[idx[has], i] = anc[idx[has], p[has]]
                    anc[:, i, i] = True
                self._allowed[None] = anc
            if window is not None:
                pos = self.position_ids
                near = (pos[:, :, None] - pos[:, None, :]) < window
                self._allowed[window] = self._allowed[None] & near
        return self._allowed[window]


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _branch_nodes(item: PackItem) -> int:
    """Tree nodes the item's continuation paths add below its prompt."""
    return len({path[:i] for path in item.branches for i in range(1, len(path) + 1)})


def _row_sizes(items: Sequence[PackItem], order: Sequence[int], share: bool) -> list[int]:
    """Nodes item ``order[j]`` adds to a row right after ``order[j - 1]`` (prefix shared)."""
    out = []
    for j, k in enumerate(order):
        own = len(items[k].tokens)
        if share and j > 0:
            own -= _lcp(items[order[j - 1]].tokens, items[k].tokens)
        out.append(own + _branch_nodes(items[k]))
    return out


def _split(
    items: Sequence[PackItem], order: Sequence[int], share: bool, cap: int
) -> list[list[int]] | None:
    """Contiguous rows of at most ``cap`` nodes each (greedy), or None if an item is larger."""
    rows: list[list[int]] = []
    size = 0
    for j, k in enumerate(order):
        alone = len(items[k].tokens) + _branch_nodes(items[k])
        if alone > cap:
            return None
        add = _row_sizes(items, [order[j - 1], k] if j else [k], share)[-1]
        if rows and size + add <= cap:
            rows[-1].append(k)
            size += add
        else:
            rows.append([k])
            size = alone
    return rows


def _sizes(items: Sequence[PackItem], rows: list[list[int]], share: bool) -> list[int]:
    return [sum(_row_sizes(items, r, share)) for r in rows]


#: how prompts are laid out in rows: ``shared`` (token trees, shared prefixes computed once),
#: ``unshared`` (several prompts per row, nothing shared), ``padded`` (one prompt per row,
#: padded to the longest: the layout of a plain left-padded batch, kept as the baseline the
#: other two are measured against)
LAYOUTS = ("shared", "unshared", "padded")


def plan_rows(
    items: Sequence[PackItem], *, share_prefix: bool = True, attention_ratio: float | None = None
) -> list[list[int]]:
    """Which items go in which row: items sorted by their tokens (so rows share long
    prefixes), cut into contiguous rows so that ``rows x width x (1 + ratio x width)`` — the
    linear layers' work plus attention's, padding included — is smallest."""
    ratio = DEFAULT_ATTENTION_RATIO if attention_ratio is None else attention_ratio
    order = (
        sorted(range(len(items)), key=lambda k: items[k].tokens)
        if share_prefix
        else list(range(len(items)))
    )
    sizes = _row_sizes(items, order, share_prefix)
    lo = max(len(it.tokens) + _branch_nodes(it) for it in items)
    hi = max(sum(sizes), lo)
    best: tuple[float, list[list[int]]] | None = None
    seen: set[int] = set()
    for k in range(1, len(items) + 1):
        # the smallest cap that fits the items into k rows (binary search on the greedy split)
        a, b = lo, hi
        while a < b:
            mid = (a + b) // 2
            rows = _split(items, order, share_prefix, mid)
            if rows is not None and len(rows) <= k:
                b = mid
            else:
                a = mid + 1
        rows = _split(items, order, share_prefix, a)
        assert rows is not None
        if len(rows) in seen:
            continue
        seen.add(len(rows))
        width = max(_sizes(items, rows, share_prefix))
        cost = len(rows) * width * (1 + ratio * width)
        if best is None or cost < best[0]:
            best = (cost, rows)
        if len(rows) < k:  # more rows than items' distinct sizes allow: done
            break
    assert best is not None
    return best[1]


class _Tree:
    """One row being built: nodes in creation order (a parent before its children)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depth: list[int] = []
        self.index: dict[tuple[Any, ...], int] = {}

    def node(self, key: tuple[Any, ...], token: int, parent: int) -> int:
        """The node of the token path ``key``, made under ``parent`` if new."""
        if key not in self.index:
            self.index[key] = len(self.tokens)
            self.tokens.append(token)
            self.parents.append(parent)
            self.depth.append(self.depth[parent] + 1 if parent >= 0 else 0)
        return self.index[key]


def pack(
    items: Sequence[PackItem],
    *,
    pad_id: int = 0,
    layout: str = "shared",
    attention_ratio: float | None = None,
    max_padding: float = 1.0,
) -> list[tuple[list[int], Packed]]:
    """Pack ``items`` into rows of token trees (module doc), and the rows into forward
    batches whose padding (rows shorter than the widest) stays within ``max_padding`` of the
    positions computed: ``[(item indices, Packed), ...]``. ``layout`` (:data:`LAYOUTS`):
    ``unshared`` gives every prompt its own tree, ``padded`` also its own row, all rows in
    one forward (the plain padded batch the packed ones are measured against)."""
    if not items:
        raise ValueError("nothing to pack")
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    share_prefix = layout == "shared"
    if layout == "padded":
        rows = [[k] for k in range(len(items))]
        max_padding = 1.0
    else:
        rows = plan_rows(items, share_prefix=share_prefix, attention_ratio=attention_ratio)
    trees: list[tuple[list[int], _Tree, list[tuple[int, tuple[int, ...] | None, int]]]] = []
    for members in rows:
        tree = _Tree()
        slots: list[tuple[int, tuple[int, ...] | None, int]] = []  # (item, path, node)
        for k in members:
            it = items[k]
            scope: tuple[Any, ...] = () if share_prefix else (k,)
            at = -1
            for i, t in enumerate(it.tokens):
                at = tree.node(scope + tuple(it.tokens[: i + 1]), t, at)
            slots.append((k, None, at))
            for path in it.branches:
                b = at
                for i, t in enumerate(path):
                    b = tree.node(scope + tuple(it.tokens) + tuple(path[: i + 1]), t, b)
                slots.append((k, tuple(path), b))
        trees.append((members, tree, slots))
    out = []
    for group in _groups([len(t.tokens) for _, t, _ in trees], max_padding):
        members = [k for g in group for k in trees[g][0]]
        out.append((members, _tensors(items, members, [trees[g] for g in group], pad_id)))
    return out


def _groups(sizes: Sequence[int], max_padding: float) -> list[list[int]]:
    """Rows (by index) grouped widest first so that each group pads at most ``max_padding``
    of what it computes; rows keep their order inside a group."""
    order = sorted(range(len(sizes)), key=lambda r: (-sizes[r], r))
    groups: list[list[int]] = []
    for r in order:
        if groups:
            g = groups[-1]
            width = sizes[g[0]]
            pad = sum(width - sizes[x] for x in g) + width - sizes[r]
            if pad <= max_padding * width * (len(g) + 1):
                g.append(r)
                continue
        groups.append([r])
    return [sorted(g) for g in groups]


def _tensors(
    items: Sequence[PackItem], members: list[int], trees: list[Any], pad_id: int
) -> Packed:
    import torch

    width = max(len(t.tokens) for _, t, _ in trees)
    n = len(trees)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    par = torch.full((n, width), -1, dtype=torch.long)
    real = torch.zeros((n, width), dtype=torch.bool)
    local = {k: j for j, k in enumerate(members)}
    answer: list[tuple[int, int]] = [(0, 0)] * len(members)
    branch: list[dict[tuple[int, ...], tuple[int, int]]] = [{} for _ in members]
    for r, (_, tree, slots) in enumerate(trees):
        m = len(tree.tokens)
        ids[r, :m] = torch.tensor(tree.tokens, dtype=torch.long)
        pos[r, :m] = torch.tensor(tree.depth, dtype=torch.long)
        par[r, :m] = torch.tensor(tree.parents, dtype=torch.long)
        real[r, :m] = True
        for k, path, node in slots:
            if path is None:
                answer[local[k]] = (r, node)
            else:
                branch[local[k]][path] = (r, node)
    mine = [items[k] for k in members]
    prompt_tokens = sum(len(it.tokens) for it in mine)
    cont = sum(len(p) for it in mine for p in it.branches)
    stats = PackStats(
        rows=n,
        width=width,
        computed=n * width,
        real=int(real.sum()),
        unshared=prompt_tokens + cont,
        prompt_tokens=prompt_tokens,
        continuation_tokens=cont,
    )
    return Packed(ids, pos, par, real, answer, branch, stats)
