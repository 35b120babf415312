"""The toy base/post-trained pair every demo, test and doc uses (no download needed)."""

from layergraft.toy.build import BuildSettings, build_pair, toy_paths

__all__ = ["BuildSettings", "build_pair", "toy_paths"]
