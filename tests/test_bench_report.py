"""`pysd bench` reporting: the Markdown table, the chart, and the command's error paths."""

import subprocess
import sys
from pathlib import Path

from pysd.bench_report import bar_chart, find_bench_dir, markdown_table

ROOT = Path(__file__).resolve().parents[1]
DATA = {"meta": {"full": False, "threads": 2, "copy_gbs": 20.0},
        "results": {"kd_loss 4x5": {"eager": {"seconds": 0.4}, "compile": {"seconds": 0.2},
                                    "pysd-cpp": {"seconds": 0.05, "peak_extra_NxC": 1.0}}}}


def test_markdown_table_has_ratios_against_every_baseline():
    md = markdown_table(DATA)
    assert "## kd_loss 4x5" in md and "speed-up vs eager" in md and "speed-up vs compile" in md
    row = next(line for line in md.splitlines() if line.startswith("| pysd-cpp"))
    assert "| 50.00 |" in row and "8.00x" in row and "4.00x" in row and "peak_extra_NxC=1.0" in row


def test_bar_chart_writes_a_png(tmp_path):
    out = tmp_path / "chart.png"
    bar_chart(DATA, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_dir_is_found_and_bad_selection_fails(tmp_path):
    assert find_bench_dir(ROOT / "bench") == ROOT / "bench"
    out = subprocess.run([sys.executable, "-m", "pysd", "bench", "--only", "no_such_bench", "--bench-dir",
                          str(ROOT / "bench"), "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "no bench files match" in out.stderr
    out = subprocess.run([sys.executable, "-m", "pysd", "bench", "--bench-dir", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and "cannot find the bench/ folder" in out.stderr
