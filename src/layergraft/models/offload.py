"""Models placed by accelerate with offloaded layers: where their weights really are.

Why a module of its own: with a ``device_map`` that sends layers to ``"disk"`` (or to the CPU
for a GPU run), accelerate leaves those parameters on the ``meta`` device and a hook on each
module loads its weights from a ``weights_map`` right before every forward. Any code that
reads or writes ``param.data`` of such a layer is silently wrong; the helpers here answer
"which parameters are offloaded", "what are their values", "on which device does this
module compute", and let a caller overlay new values for the duration of a block.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from layergraft.errors import InputError


class OffloadOverlay(Mapping):
    """An accelerate offload ``weights_map`` with some entries replaced (read-only view).

    An override may be a zero-argument callable, evaluated at each access: the hook loads
    one module's weights per forward, so a computed value (a soup blend) is then never held
    for the whole model at once — which is the point of offloading."""

    def __init__(self, base: Any, overrides: dict[str, Any]) -> None:
        self.base, self.overrides = base, overrides

    def __getitem__(self, key: str) -> Any:
        if key not in self.overrides:
            return self.base[key]
        v = self.overrides[key]
        return v() if callable(v) else v

    def __iter__(self) -> Iterator[str]:
        yield from self.overrides
        yield from (k for k in self.base if k not in self.overrides)

    def __len__(self) -> int:
        return len(set(self.base.keys()) | set(self.overrides))


def _hooks(module: Any) -> tuple[Any, ...]:
    """The accelerate hooks attached to ``module`` itself (a SequentialHook unpacked)."""
    h = getattr(module, "_hf_hook", None)
    return () if h is None else tuple(getattr(h, "hooks", (h,)))


def offloaded_params(model: Any) -> dict[str, tuple[Any, str]]:
    """``qualified parameter name -> (hook, key in hook.weights_map)`` for every parameter
    that an accelerate hook reloads from an offload map at each forward (empty for a model
    that is not offloaded)."""
    out: dict[str, tuple[Any, str]] = {}
    for mname, mod in model.named_modules():
        for hook in _hooks(mod):
            if not getattr(hook, "offload", False) or getattr(hook, "weights_map", None) is None:
                continue
            recurse = bool(getattr(hook, "place_submodules", False))
            for pname, _ in mod.named_parameters(recurse=recurse):
                out[f"{mname}.{pname}" if mname else pname] = (hook, pname)
    return out


def param_value(p: Any, qname: str, offloaded: dict[str, tuple[Any, str]]) -> Any:
    """The values of parameter ``p`` (named ``qname``): its data, or for an offloaded
    parameter the tensor its hook would load."""
    if qname in offloaded:
        hook, key = offloaded[qname]
        return hook.weights_map[key]
    return p.data


def execution_device(module: Any) -> Any:
    """The device ``module`` computes on: its accelerate hook's execution device, else the
    device of its first parameter that holds data (CPU when it has none)."""
    import torch

    for mod in module.modules():
        for hook in _hooks(mod):
            dev = getattr(hook, "execution_device", None)
            if dev is not None:
                return torch.device(dev) if not isinstance(dev, torch.device) else dev
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def refuse_offloaded(tensors: list[Any], what: str) -> None:
    """Folding an operator into weights edits them in place, which an offloaded (meta)
    weight cannot take: say so, with the two ways out."""
    if any(t.device.type == "meta" for t in tensors):
        raise InputError(
            f"{what} is offloaded by the device map, so the operator cannot be folded into it; "
            "keep that layer on a device (not 'disk') or use --recover ghost"
        )
