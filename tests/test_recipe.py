"""Recipes read their model paths relative to the recipe file, so they work from any directory;
hub ids and paths that name nothing beside the recipe pass through as written."""

from __future__ import annotations

from pathlib import Path

from layergraft.cli import main
from layergraft.recipe import load_recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_relative_paths_are_read_from_the_recipe_directory(tmp_path, monkeypatch):
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "post").mkdir()
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text("base: ../models/base\npost: ../models/post\nlayers: '1:2'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = load_recipe(recipe, "restore")
    assert data["base"] == str((tmp_path / "models" / "base").resolve())
    assert data["post"] == str((tmp_path / "models" / "post").resolve())
    assert data["layers"] == "1:2"


def test_hub_ids_absolute_and_cwd_relative_paths_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "post").mkdir(parents=True)  # relative to the cwd, not to the recipe
    sub = tmp_path / "sub"
    sub.mkdir()
    recipe = sub / "r.yaml"
    recipe.write_text("base: meta-llama/Llama-3.1-8B\npost: runs/post\nalpha: 0.5\n")
    data = load_recipe(recipe, "soup")
    assert data["base"] == "meta-llama/Llama-3.1-8B"
    assert data["post"] == "runs/post"
    recipe.write_text(f"base: {tmp_path / 'runs' / 'post'}\npost: runs/post\nalpha: 0.5\n")
    assert load_recipe(recipe, "soup")["base"] == str(tmp_path / "runs" / "post")


def test_the_shipped_examples_run_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for op in ("restore", "soup"):
        out = tmp_path / op
        rc = main([op, "--recipe", str(EXAMPLES / f"{op}.yaml"), "--out", str(out), "--quiet"])
        assert rc == 0, op
        assert (out / "layergraft.json").is_file()
