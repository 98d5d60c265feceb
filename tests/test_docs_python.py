"""Every ```python block of docs/python.md runs, in order, in one namespace (on a copy of recipes/demo.yaml)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_python_docs_examples_run(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    shutil.copy(ROOT / "recipes" / "demo.yaml", tmp_path / "recipes" / "demo.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNTHFORGE_CACHE", raising=False)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "python.md").read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), namespace)
    assert (tmp_path / "cache").is_dir() and (tmp_path / "train_hf" / "README.md").is_file()
