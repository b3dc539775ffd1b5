"""The pysd command line through subprocess: demo, refine (every file format, every bad-file case), bench."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _data import blobs

ROOT = Path(__file__).resolve().parents[1]


def pysd_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pysd", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_demo_quick(tmp_path):
    out = pysd_cli("demo", "--quick", "--no-progress", "--out-dir", tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "demo.json").read_text())
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    m = res["methods"]
    teacher = m["teacher"]["train_acc"]
    # at 40% noise the PLL student and the refinery beat the noisy teacher on the training inputs
    assert m["PLL student"]["train_acc"] > teacher
    assert m["AML-KD refinery"]["train_acc"] > teacher
    assert {f"SD round {r}" for r in range(1, 5)} <= set(m) and {f"theory round {r}" for r in range(5)} <= set(m)
    assert "test acc" in out.stdout and "AML-KD refinery" in out.stdout


def _write(fmt, path, x, y):
    if fmt == "npy":
        np.save(path / "f.npy", x), np.save(path / "l.npy", y)
        return path / "f.npy", path / "l.npy"
    if fmt == "npz":
        np.savez(path / "data.npz", features=x, labels=y)
        return path / "data.npz", path / "data.npz"
    if fmt == "pt":
        torch.save({"features": torch.from_numpy(x), "labels": torch.from_numpy(y)}, path / "data.pt")
        return path / "data.pt", path / "data.pt"
    np.savetxt(path / "f.csv", x, delimiter=","), np.savetxt(path / "l.csv", y, delimiter=",", fmt="%d")
    return path / "f.csv", path / "l.csv"


def test_refine_round_trips_every_format(tmp_path):
    x, noisy, clean = blobs()
    results = {}
    for fmt in ("npy", "npz", "pt", "csv"):
        d = tmp_path / fmt
        d.mkdir()
        f, lab = _write(fmt, d, x, noisy)
        out = pysd_cli("refine", f, lab, "--out", d / "out.npz", "--csv", "--k", 8)
        assert out.returncode == 0, out.stderr
        assert "labels changed" in out.stdout and "estimated noise rate" in out.stdout
        r = np.load(d / "out.npz")
        assert set(r.files) >= {"labels", "given_labels", "confidence", "weights", "issues", "oos_scores"}
        assert r["oos_scores"].shape == (len(x), 4) and r["labels"].shape == (len(x),)
        assert (r["labels"] == clean).mean() > 0.95 > (noisy == clean).mean()
        assert set(r["issues"]) == set(np.flatnonzero(r["labels"] != noisy))
        csv = np.loadtxt(d / "out.csv", delimiter=",", skiprows=1)
        assert csv.shape == (len(x), 6) and (csv[:, 2] == r["labels"]).all()
        results[fmt] = r["labels"]
    for fmt in ("npz", "pt", "csv"):
        assert (results[fmt] == results["npy"]).all()


def test_refine_does_not_overwrite_without_force(tmp_path):
    x, noisy, _ = blobs(n=60)
    f, lab = _write("npy", tmp_path, x, noisy)
    (tmp_path / "out.npz").write_bytes(b"keep me")
    out = pysd_cli("refine", f, lab, "--out", tmp_path / "out.npz", "--k", 5)
    assert out.returncode == 2 and "--force" in out.stderr
    assert (tmp_path / "out.npz").read_bytes() == b"keep me"
    assert pysd_cli("refine", f, lab, "--out", tmp_path / "out.npz", "--k", 5, "--force").returncode == 0


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file"),
    ("shape", "2-D"),
    ("lengths", "rows but labels have"),
    ("nan", "NaN or inf"),
    ("float_labels", "must be integers"),
    ("few", "too few for k"),
    ("suffix", "unsupported file type"),
])
def test_refine_bad_files(tmp_path, case, message):
    x, noisy, _ = blobs(n=60)
    f, lab = tmp_path / "f.npy", tmp_path / "l.npy"
    np.save(f, x)
    np.save(lab, noisy)
    if case == "missing":
        f = tmp_path / "nope.npy"
    elif case == "shape":
        np.save(f, x.reshape(60, 2, 4))
    elif case == "lengths":
        np.save(lab, noisy[:50])
    elif case == "nan":
        x[7, 1] = np.nan
        np.save(f, x)
    elif case == "float_labels":
        np.save(lab, noisy + 0.5)
    elif case == "few":
        np.save(f, x[:5]), np.save(lab, noisy[:5])
    elif case == "suffix":
        f = tmp_path / "f.h5"
        f.write_text("x")
    out = pysd_cli("refine", f, lab, "--out", tmp_path / "out.npz", "--k", 10)
    assert out.returncode == 2
    assert message in out.stderr and out.stderr.startswith("pysd refine: error:")
    assert "Traceback" not in out.stderr
