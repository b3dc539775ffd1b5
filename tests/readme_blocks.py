"""The ```python blocks of one README section (by its ``## `` heading), for tests that run them."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(heading: str) -> list:
    text = README.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, f"README section {heading!r} has no python block"
    return blocks


def run_section(heading: str) -> dict:
    """Executes the section's python blocks in one namespace and returns it."""
    scope = {"__name__": "__readme__"}
    for block in python_blocks(heading):
        exec(compile(block, f"README.md ({heading})", "exec"), scope)
    return scope
