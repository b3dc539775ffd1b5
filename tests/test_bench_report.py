"""`pysd bench` reporting: the Markdown table, the chart, and the command's error paths."""

import json
import os
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
    assert "machine" not in md
    named = {**DATA, "meta": {**DATA["meta"], "machine": "AMD EPYC, 2 cores"}}
    assert "machine: AMD EPYC, 2 cores" in markdown_table(named)


def test_bar_chart_writes_a_png(tmp_path):
    out = tmp_path / "chart.png"
    bar_chart(DATA, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bar_chart_whiskers_are_the_paired_min_max(tmp_path, monkeypatch):
    import matplotlib.axes

    seen = {}
    orig = matplotlib.axes.Axes.barh

    def spy(self, names, widths, **kw):
        seen.update(zip(names, zip(widths, kw["xerr"][0], kw["xerr"][1])))
        return orig(self, names, widths, **kw)
    monkeypatch.setattr(matplotlib.axes.Axes, "barh", spy)
    data = {"meta": {}, "results": {"g": {"eager": {"seconds": 1.0},
                                          "pysd": {"seconds": 0.25, "paired_vs_eager": "3.9 (3.5-4.5)"}}}}
    bar_chart(data, tmp_path / "c.png")
    speed, below, above = seen["pysd"]
    assert speed == 4.0 and abs(below - 0.5) < 1e-12 and abs(above - 0.5) < 1e-12
    assert seen["eager"][1:] == (0, 0)  # no paired rounds stored: no whisker


def test_bench_dir_is_found_and_bad_selection_fails(tmp_path, monkeypatch):
    assert find_bench_dir(ROOT / "bench") == ROOT / "bench"
    monkeypatch.chdir(ROOT)  # a relative --bench-dir names the same folder from pytest's working directory
    assert find_bench_dir("bench") == ROOT / "bench"
    out = subprocess.run([sys.executable, "-m", "pysd", "bench", "--only", "no_such_bench", "--bench-dir",
                          str(ROOT / "bench"), "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "no bench files match" in out.stderr
    out = subprocess.run([sys.executable, "-m", "pysd", "bench", "--bench-dir", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and "cannot find the bench/ folder" in out.stderr


NO_BASELINE = {"meta": {}, "results": {
    "distributed knn_graph": {"1 rank": {"seconds": 2.0}, "2 ranks": {"seconds": 1.0, "halo_MB": 1.5}},
    "knn_graph": {"faiss_flat_ip_search": {"seconds": 1.0}, "pysd_knn_graph": {"seconds": 0.5}},
    "theory": {"block_fast_path": {"seconds": 0.001}}}}


def test_markdown_tables_are_well_formed_for_every_group():
    md = markdown_table(NO_BASELINE)
    for group in NO_BASELINE["results"]:
        assert f"## {group}" in md
    rows = [line for line in md.splitlines() if line.startswith("|")]
    tables, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    tables.append(current) if current else None
    assert len(tables) == 3 and rows
    for t in tables:
        cells = [line.count("|") for line in t]
        assert len(set(cells)) == 1, t  # header, separator and rows have the same number of cells
    assert "| 2 ranks | 1000.00 | 2.00x | halo_MB=1.5 |" in md  # no named baseline: the first entry is


def test_bar_chart_has_a_panel_per_group(tmp_path, monkeypatch):
    import matplotlib.figure

    titles = []
    orig = matplotlib.figure.Figure.savefig

    def spy(self, *a, **k):
        titles.extend(ax.get_title() for ax in self.axes)
        return orig(self, *a, **k)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    bar_chart(NO_BASELINE, tmp_path / "c.png")
    assert titles == list(NO_BASELINE["results"])


def test_missing_bench_extra_is_named(monkeypatch, capsys, tmp_path):
    import importlib.util

    import pysd.bench_report as br
    from pysd.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(br.importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    assert main(["bench", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "faiss-cpu" in err and "pysd[bench]" in err
    assert list(tmp_path.iterdir()) == []


def test_benchmarks_ship_in_the_package(tmp_path):
    """build_py (what a wheel contains, without compiling) puts every bench file under pysd/bench/, and
    `pysd bench` finds them there when no source checkout is around."""
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shipped = tmp_path / "lib" / "pysd" / "bench"
    expected = {p.name for p in (ROOT / "bench").glob("*.py")}
    assert expected <= {p.name for p in shipped.glob("*.py")} and "conftest.py" in expected
    code = "import pysd.bench_report as b; print(b.find_bench_dir())"
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "lib"), "PYSD_BACKEND": ""})
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == shipped


def test_each_bench_file_runs_in_its_own_process(tmp_path):
    """`pysd bench` merges the results of one pytest process per bench file into one table."""
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "conftest.py").write_text((ROOT / "bench" / "conftest.py").read_text())
    for name in ("first", "second"):
        (bench / f"bench_{name}.py").write_text(
            "import os\nfrom conftest import record_paired\n\n"
            f"def test_{name}():\n"
            f"    record_paired('{name}', {{'eager': [2.0, 2.0], 'pysd': [1.0, 1.0]}}, ['pysd'],\n"
            "                  pid={'pysd': os.getpid()})\n"
            f"    record_paired('shared', {{'eager': [2.0], 'pysd {name}': [1.0]}}, ['pysd {name}'])\n")
    out = subprocess.run([sys.executable, "-m", "pysd", "bench", "--bench-dir", str(bench), "--out-dir",
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "out" / "bench_results.json").read_text())
    assert set(data["results"]) == {"first", "second", "shared"} and "machine" in data["meta"]
    assert set(data["results"]["shared"]) == {"eager", "pysd first", "pysd second"}  # merged, not overwritten
    assert data["results"]["first"]["pysd"]["pid"] != data["results"]["second"]["pysd"]["pid"]
    table = (tmp_path / "out" / "bench_results.md").read_text()
    assert "first" in table and "second" in table
    assert "copy bandwidth" not in table and "nan" not in table  # no bench measured it
