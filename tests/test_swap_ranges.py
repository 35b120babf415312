"""The in-memory hybrids take layer ranges in the one convention (issue 33): ``swapped_layers``
and ``souped`` accept ``"4:7"``, ``"0:2,5:7"``, a list of those, ``(start, end)`` pairs, one
bare pair and :class:`Restored` items, and refuse a bad one with a one-line
:class:`~layergraft.errors.RangeError` before any weight changes (``swapped_layers(m, b,
["4:7"])`` used to raise a raw TypeError).

The reference is independent of the code under test: a deep copy of the post model whose
decoder layers are overwritten by hand (``load_state_dict`` of the base's layer, or the
weights blended by hand), run through a plain transformers forward.
"""

from __future__ import annotations

import copy

import pytest
import torch

from layergraft.errors import LayergraftError, RangeError
from layergraft.slr.hybrid.restored import Restored
from layergraft.slr.hybrid.soup import souped
from layergraft.slr.hybrid.swap import as_ranges, swapped_layers
from tiny import make_tiny

IDS = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pair():
    return make_tiny("llama", num_layers=4, seed=2), make_tiny("llama", num_layers=4, seed=1)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def by_hand(post, base, layers, mlp_only=False):
    """The post model with ``layers`` copied from the base by hand (the MLP only, if asked)."""
    ref = copy.deepcopy(post)
    for i in layers:
        src, dst = base.model.layers[i], ref.model.layers[i]
        if mlp_only:
            dst.mlp.load_state_dict(src.mlp.state_dict())
        else:
            dst.load_state_dict(src.state_dict())
    return ref


def blended_by_hand(post, base, layers, alpha):
    ref = copy.deepcopy(post)
    with torch.no_grad():
        for i in layers:
            mine, theirs = dict(ref.model.layers[i].named_parameters()), dict(base.model.layers[i].named_parameters())  # fmt: skip
            for name, p in mine.items():
                p.copy_((1 - alpha) * p + alpha * theirs[name])
    return ref


SAME = {  # every spelling of layers 1, 2 and 3
    "string": "1:4",
    "list of strings": ["1:4"],
    "list of pairs": [(1, 4)],
    "one pair": (1, 4),
    "list pair": [[1, 4]],
    "split": "1:2,2:4",
    "split list": ["2:4", "1:2"],
    "mixed": ["1:2", (2, 4)],
    "restored": [Restored((1, 4))],
}


@pytest.mark.parametrize("spec", list(SAME.values()), ids=list(SAME))
def test_every_spelling_swaps_the_layers_a_hand_copy_does(pair, spec):
    post, base = pair
    before = logits(post)
    want = logits(by_hand(post, base, [1, 2, 3]))
    with swapped_layers(post, base, spec):
        got = logits(post)
    assert torch.equal(got, want)
    assert not torch.equal(got, before)
    assert torch.equal(logits(post), before)  # undone


def test_parts_and_restored_items_keep_their_parts(pair):
    post, base = pair
    want = logits(by_hand(post, base, [0, 2], mlp_only=True))
    with swapped_layers(post, base, "0:1,2:3", parts="mlp"):
        assert torch.equal(logits(post), want)
    with swapped_layers(post, base, [Restored((0, 1), ("mlp",)), Restored((2, 3), ("mlp",))]):
        assert torch.equal(logits(post), want)


BAD = {
    "reversed": ("3:1", r"reversed; write it as 1:3"),
    "out of bounds": ("1:9", r"out of bounds: the model has 4 layers"),
    "not a range": (["x"], r"not of the form start:end"),
    "overlap": ("0:2,1:3", r"overlap; merge them into 0:3"),
    "empty": ("2:2", r"is empty"),
    "a number": (5, r"are not ranges; write them as '4:7'"),
    "None inside": ([None], r"neither 'start:end' nor \[start, end\]"),
    "nothing": ([], r"no layer ranges given"),
}


@pytest.mark.parametrize("spec,message", list(BAD.values()), ids=list(BAD))
def test_a_bad_range_is_one_line_and_changes_nothing(pair, spec, message):
    post, base = pair
    before = {k: v.clone() for k, v in post.state_dict().items()}
    with pytest.raises(RangeError, match=message) as err, swapped_layers(post, base, spec):
        pass
    assert isinstance(err.value, LayergraftError) and "\n" not in str(err.value)
    with pytest.raises(RangeError, match=message), souped(post, base, 0.5, layers=spec):
        pass
    assert all(torch.equal(v, before[k]) for k, v in post.state_dict().items())


@pytest.mark.parametrize("spec", ["1:3", ["1:3"], (1, 3), [(1, 2), "2:3"]])
def test_souped_blends_the_layers_a_hand_blend_does(pair, spec):
    post, base = pair
    want = logits(blended_by_hand(post, base, [1, 2], 0.25))
    with souped(post, base, 0.25, layers=spec):
        got = logits(post)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, logits(post), atol=1e-3)


def test_as_ranges_is_the_shared_reading():
    assert as_ranges("4:7,0:2") == [(0, 2), (4, 7)]
    assert as_ranges((4, 7), 8) == [(4, 7)]
    assert as_ranges([Restored((4, 7), ("attn",)), "0:1"]) == [(0, 1), (4, 7)]
    with pytest.raises(RangeError, match="out of bounds"):
        as_ranges("4:9", 8)
