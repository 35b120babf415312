"""Ghost operators on the residual stream, and the remote-code model class that carries them.

This one file is both a module of layergraft (``layergraft.models.ghost`` and ``layergraft.prune.ghost`` use
:class:`GhostOperator` and :func:`install_ghosts` from it) and the ``trust_remote_code`` file
written into every ghosted model directory, so the code that made the logits in memory is the
code that reproduces them after ``AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True)``. It imports nothing but torch and transformers.

Design: a ghost acts on the residual stream *between* two decoder layers. Rather than wrap a
layer (which would rename every tensor of it and break the standard checkpoint), each ghost
is a forward pre-hook on the first kept layer after the gap, ``h -> layer(h + h·Δ + b)`` (or
on the final norm when the gap is at the end). All decoder weights keep their standard names;
the operators live in one top-level ``layergraft_ghosts`` ModuleDict, keyed by the position
(new layer index, or the layer count for "before the final norm").

When written into a model directory the two ``BASE_*`` names below are filled in with the
family's transformers classes; the classes below then subclass them. The config gets its own
``model_type`` on purpose: without ``trust_remote_code`` transformers refuses to load the
directory instead of silently loading the family's class without the ghosts.
"""

from __future__ import annotations

import torch
from torch import nn

BASE_CONFIG = None  # e.g. "LlamaConfig"; filled in when written into a model directory
BASE_MODEL = None  # e.g. "LlamaForCausalLM"
GHOST_MODEL_TYPE = "layergraft_ghost"


class GhostOperator(nn.Module):
    """``full``: ``h + h·delta (+ bias)``; ``diag``: ``h ⊙ scale``; ``scalar``: ``h · scale``.

    Computed in float32 whatever the model dtype (``delta`` is near zero for a good fit, so
    storing ``I + Δ`` would waste the low bits), cast back to the stream's dtype.
    """

    def __init__(self, hidden: int, kind: str = "full", bias: bool = False) -> None:
        super().__init__()
        self.kind = kind
        if kind == "full":
            self.delta = nn.Parameter(torch.zeros(hidden, hidden), requires_grad=False)
            self.bias = nn.Parameter(torch.zeros(hidden), requires_grad=False) if bias else None
        elif kind == "diag":
            self.scale = nn.Parameter(torch.ones(hidden), requires_grad=False)
        elif kind == "scalar":
            self.scale = nn.Parameter(torch.ones(()), requires_grad=False)
        else:
            raise ValueError(f"unknown ghost kind {kind!r}")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.float()
        if self.kind == "full":
            y = x + x @ self.delta.float()
            if self.bias is not None:
                y = y + self.bias.float()
        else:
            y = x * self.scale.float()
        return y.to(h.dtype)


def _apply_to_hidden(op: GhostOperator, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if args:
        return (op(args[0]), *args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = op(kwargs["hidden_states"])
    return args, kwargs


def install_ghosts(
    model: nn.Module, ghosts: nn.ModuleDict, layers_path: str, norm_module: str
) -> list:
    """Register one forward pre-hook per ghost: on decoder layer ``int(key)``, or on the final
    norm when ``int(key)`` equals the number of layers. Returns the hook handles."""
    layers = model.get_submodule(layers_path)
    handles = []
    for key, op in ghosts.items():
        pos = int(key)
        target = layers[pos] if pos < len(layers) else model.get_submodule(norm_module)
        handles.append(
            target.register_forward_pre_hook(
                lambda _m, a, kw, op=op: _apply_to_hidden(op, a, kw), with_kwargs=True
            )
        )
    return handles


def build_ghosts(spec: dict) -> nn.ModuleDict:
    """The (zero-initialised) operators described by a config's ``layergraft_ghost`` entry."""
    hidden = int(spec["hidden_size"])
    return nn.ModuleDict(
        {
            str(k): GhostOperator(hidden, v["kind"], bool(v.get("bias", False)))
            for k, v in spec["positions"].items()
        }
    )


if BASE_CONFIG is not None and BASE_MODEL is not None:  # remote-code use only
    import transformers

    _BaseConfig = getattr(transformers, BASE_CONFIG)
    _BaseModel = getattr(transformers, BASE_MODEL)

    class LayergraftGhostConfig(_BaseConfig):
        model_type = GHOST_MODEL_TYPE

    class LayergraftGhostForCausalLM(_BaseModel):
        config_class = LayergraftGhostConfig

        def __init__(self, config):
            super().__init__(config)
            spec = config.layergraft_ghost
            self.layergraft_ghosts = build_ghosts(spec)
            self._ghost_hooks = install_ghosts(
                self, self.layergraft_ghosts, spec["layers_path"], spec["norm_module"]
            )

    def _inherit_key_renames() -> None:
        """Give the ghost class the family's checkpoint key renames.

        Why: transformers renames legacy tensor names on load by class name or
        ``model_type`` (GPT-NeoX's ``embed_out`` -> ``lm_head``), and skips remote-code
        classes unless a mapping is registered for them, so without this a ghosted GPT-NeoX
        would load with a freshly initialised head. Older transformers have no such
        registry; they load the names as they are."""
        try:
            from transformers import conversion_mapping as cm
        except ImportError:  # pragma: no cover - transformers < 5
            return
        get = getattr(cm, "get_checkpoint_conversion_mapping", None)
        register = getattr(cm, "register_checkpoint_conversion_mapping", None)
        if get is None or register is None:  # pragma: no cover
            return
        found = get(BASE_MODEL) or get(getattr(_BaseConfig, "model_type", None))
        if found:
            register(LayergraftGhostForCausalLM.__name__, found, overwrite=True)

    _inherit_key_renames()
