"""The README is true: its quick start is what CI runs, every example runs, and every Python block either
runs as written or is an excerpt of an example (its first line names it), line for line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.M | re.S)
EXCERPT = re.compile(r"^# (?:excerpt of )?(examples/[\w.]+\.py)")


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = re.search(r"^TEST_CMD='(.+)'$", ci, re.M).group(1)
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [line for line in quick.splitlines() if line.startswith("python -m pip install")]
    assert len(commands) == 2, commands
    assert commands[1] == cmd


def test_there_are_examples_and_blocks():
    assert len(EXAMPLES) >= 5 and len(BLOCKS) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    out = _run([str(path)], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block(block, tmp_path):
    first = block.splitlines()[0]
    m = EXCERPT.match(first)
    if m is None:
        out = _run(["-c", block], tmp_path)
        assert out.returncode == 0, out.stderr[-4000:]
        return
    source = (ROOT / m.group(1)).read_text().splitlines()
    pos = 0
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        hits = [i for i in range(pos, len(source)) if source[i].strip() == line.strip()]
        assert hits, f"README line not in {m.group(1)} (in this order): {line!r}"
        pos = hits[0] + 1
