"""Token-tree packing against references written here: every sequence read back from the
tensors by walking parent pointers, the attention mask rebuilt in numpy, shared prefixes
counted as a set of prefixes, and the row plan checked against a brute force over every way
to cut the sorted prompts into rows."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from layergraft.models.packing import LAYOUTS, PackItem, pack, plan_rows


def _items(seed: int, n: int = 9, branches: bool = True) -> list[PackItem]:
    """Prompts that share openings of several lengths (a chat template's and a category's),
    each with continuation paths of one and two tokens below it."""
    rng = random.Random(seed)
    heads = [tuple(rng.randrange(50) for _ in range(rng.randrange(2, 7))) for _ in range(3)]
    out = []
    for _ in range(n):
        tokens = rng.choice(heads) + tuple(rng.randrange(50) for _ in range(rng.randrange(1, 6)))
        paths: list[tuple[int, ...]] = []
        if branches:
            firsts = rng.sample(range(50, 60), rng.randrange(0, 4))
            paths = [(t,) for t in firsts] + [(t, 61) for t in firsts[:1]]
        out.append(PackItem(tokens, tuple(paths)))
    return out


def _walk(packed, row: int, col: int) -> list[int]:
    """The token sequence ending at (row, col): the node, its parent, ... back to the root."""
    parent = packed.parent.numpy()
    ids = packed.input_ids.numpy()
    seq = []
    while col >= 0:
        seq.append(int(ids[row, col]))
        col = int(parent[row, col])
    return seq[::-1]


def _prefixes(items: list[PackItem]) -> set[tuple[int, ...]]:
    """Every distinct token path of the items (prompts and continuations): the nodes a token
    tree that shares every common prefix holds."""
    out = set()
    for it in items:
        for seq in [it.tokens] + [it.tokens + p for p in it.branches]:
            out |= {seq[: i + 1] for i in range(len(seq))}
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", range(6))
def test_every_sequence_reads_back_from_the_tree_at_its_own_positions(layout, seed):
    items = _items(seed)
    batches = pack(items, pad_id=99, layout=layout, max_padding=0.05)
    placed = sorted(k for members, _ in batches for k in members)
    assert placed == list(range(len(items)))
    for members, packed in batches:
        pos = packed.position_ids.numpy()
        real = packed.real.numpy()
        for j, k in enumerate(members):
            it = items[k]
            row, col = packed.answer[j]
            assert _walk(packed, row, col) == list(it.tokens)
            assert pos[row, col] == len(it.tokens) - 1
            assert set(packed.branch[j]) == set(it.branches)
            for path, (r, c) in packed.branch[j].items():
                assert r == row and _walk(packed, r, c) == list(it.tokens + path)
                assert pos[r, c] == len(it.tokens) + len(path) - 1
        # padding: the pad id, no parent, not real, and only past each row's last real node
        ids, par = packed.input_ids.numpy(), packed.parent.numpy()
        assert (ids[~real] == 99).all() and (par[~real] == -1).all()
        for r in range(real.shape[0]):
            n = int(real[r].sum())
            assert real[r, :n].all() and not real[r, n:].any()
            # a parent comes before its child (the mask is built in one pass over columns)
            assert all(par[r, c] < c for c in range(n))
        stats = packed.stats
        assert stats.computed == real.size and stats.real == int(real.sum())
        mine = [items[k] for k in members]
        assert stats.prompt_tokens == sum(len(i.tokens) for i in mine)
        assert stats.continuation_tokens == sum(len(p) for i in mine for p in i.branches)
        assert stats.unshared == stats.prompt_tokens + stats.continuation_tokens
        if layout == "padded":
            assert real.shape[0] == len(members)
        else:
            assert stats.padded <= 0.05 * stats.computed


@pytest.mark.parametrize("seed", range(6))
def test_shared_rows_compute_each_distinct_prefix_once(seed):
    items = _items(seed)
    for members, packed in pack(items, layout="shared", max_padding=0.05):
        rows = {packed.answer[j][0] for j in range(len(members))}
        for r in rows:
            in_row = [items[k] for j, k in enumerate(members) if packed.answer[j][0] == r]
            assert int(packed.real[r].sum()) == len(_prefixes(in_row))
    for members, packed in pack(items, layout="unshared", max_padding=0.05):
        for r in {packed.answer[j][0] for j in range(len(members))}:
            in_row = [items[k] for j, k in enumerate(members) if packed.answer[j][0] == r]
            assert int(packed.real[r].sum()) == sum(len(_prefixes([i])) for i in in_row)


def _reference_mask(packed, window=None) -> np.ndarray:
    """allowed[r, i, j]: j is i or an ancestor of i (and, with a window, fewer than window
    positions back); a padding slot sees itself only."""
    par, pos = packed.parent.numpy(), packed.position_ids.numpy()
    rows, width = par.shape
    out = np.zeros((rows, width, width), dtype=bool)
    for r in range(rows):
        for i in range(width):
            j = i
            while j >= 0:
                if window is None or pos[r, i] - pos[r, j] < window:
                    out[r, i, j] = True
                j = int(par[r, j])
    return out


@pytest.mark.parametrize("window", [None, 1, 3, 6])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_mask_lets_a_token_see_exactly_its_ancestors(layout, window):
    for _, packed in pack(_items(3, n=7), layout=layout, max_padding=0.05):
        want = _reference_mask(packed, window)
        assert np.array_equal(packed.allowed(window).numpy(), want)
    # the full mask is cached and the windowed one is derived from it, in either order
    _, packed = pack(_items(4, n=5), layout="shared")[0]
    assert np.array_equal(packed.allowed(2).numpy(), _reference_mask(packed, 2))
    assert np.array_equal(packed.allowed().numpy(), _reference_mask(packed))


def _row_nodes(items: list[PackItem], share: bool) -> int:
    return len(_prefixes(items)) if share else sum(len(_prefixes([i])) for i in items)


@pytest.mark.parametrize("ratio", [0.0, 3e-4, 0.05])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_the_row_plan_is_the_cheapest_cut_of_the_sorted_prompts(seed, share, ratio):
    """Brute force: every way to cut the prompts (sorted by tokens when prefixes are shared,
    in their own order otherwise) into contiguous rows, costed rows x width x (1 + ratio x
    width); the plan must cost the minimum."""
    items = _items(seed, n=7)
    order = sorted(range(len(items)), key=lambda k: items[k].tokens) if share else list(range(7))

    def cost(rows: list[list[int]]) -> float:
        width = max(_row_nodes([items[k] for k in r], share) for r in rows)
        return len(rows) * width * (1 + ratio * width)

    best = min(
        cost([order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))])
        for n in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), n)
    )
    rows = plan_rows(items, share_prefix=share, attention_ratio=ratio)
    assert sorted(k for r in rows for k in r) == list(range(len(items)))
    assert [k for r in rows for k in r] == order  # contiguous, in that order
    assert cost(rows) == pytest.approx(best)


def test_rows_group_into_batches_that_pad_at_most_the_limit():
    # rows of very different widths: long prompts alone, short ones many to a row
    rng = random.Random(0)
    items = [PackItem(tuple(rng.randrange(90) for _ in range(n))) for n in [40, 3, 38, 4, 5, 3]]
    for limit in (0.0, 0.05, 0.3):
        batches = pack(items, layout="unshared", attention_ratio=0.05, max_padding=limit)
        for _, packed in batches:
            assert packed.stats.padded <= limit * packed.stats.computed
        assert sorted(k for m, _ in batches for k in m) == list(range(len(items)))
    # the padded layout is one forward of one row per prompt, however much it pads
    ((members, packed),) = pack(items, layout="padded", max_padding=0.0)
    assert members == list(range(6)) and packed.stats.rows == 6 and packed.stats.width == 40


def test_bad_packing_requests_are_refused():
    with pytest.raises(ValueError, match="nothing to pack"):
        pack([])
    with pytest.raises(ValueError, match="layout 'dense' is not one of"):
        pack([PackItem((1, 2))], layout="dense")


def test_pack_stats_as_the_plan_prints_them():
    """Two prompts sharing 3 of 4 tokens, one branch each, in one row: 4 + 1 + 1 + 1 nodes,
    and the names the plan and benchmark JSON read."""
    ((_, packed),) = pack([PackItem((5, 6, 7, 8), ((9,),)), PackItem((5, 6, 7, 4), ((9,),))])
    got = packed.stats.as_json()
    assert got == {
        "rows": 1, "width": 7, "computed_positions": 7, "real_positions": 7,
        "padded_positions": 0, "padding_share": 0.0, "unshared_positions": 10,
        "prompt_tokens": 8, "continuation_tokens": 2,
    }  # fmt: skip
