"""Checkpoints as files: reading, writing and describing safetensors checkpoints, no torch.

Reading order: ``format`` (the container, by hand) -> ``reader`` (a validated local directory
from a path, hub id or ``.gguf``; ``convert`` does the ``.gguf`` / pickle conversion) ->
``writer`` (sharded output in one streaming pass, hashed and NaN-scanned while written) ->
``atomic`` (outputs that are absent or complete) -> ``model_dir`` (a self-describing output
model directory: weights, sidecars, recipe, ``provenance``, card). ``describe`` is
``layergraft inspect``; ``finite`` the NaN/Inf scan; ``layout`` the file names; ``dtypes`` the
torch <-> safetensors dtype names.
"""
