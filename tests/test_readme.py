"""The README's code runs as written (docs that match the code)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    assert (tmp_path / "opt.pt").exists()


def test_readme_opens_with_the_two_commands():
    match = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    first_block = match.group(1).strip().splitlines()
    assert first_block[0].split("#")[0].strip().endswith("-m trainers.pretrain")
    assert first_block[1].split("#")[0].strip().endswith("-m pytest -q")
    ci = (README.parent / ".ci" / "run").read_text()
    assert first_block[1].split("#")[0].strip() in ci
