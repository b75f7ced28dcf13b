"""The package as installed: every module of nbqueue/ is in the list that builds ship."""

from __future__ import annotations

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_package_directory_is_shipped():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = set(config["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts)
               for init in (ROOT / "nbqueue").rglob("__init__.py")}
    assert on_disk == shipped, "add the missing package(s) to pyproject.toml's packages"
