"""The command line on the files people have, and on every bad output path: exit 2, one line, nothing
half-written (in-process through ``pysd.cli.main``; test_cli.py covers the subprocess runs)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import pysd.refine
from pysd.cli import main
from pysd.demo import load_dataset
from pysd.io import encode_labels
from pysd.refine import estimate_noise_rate
from _data import blobs


@pytest.fixture
def data(tmp_path):
    x, noisy, clean = blobs()
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "l.npy", noisy)
    return tmp_path, x, noisy, clean


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("pysd ") and ": error: " in err, err
    for n in needles:
        assert n in err, err


@pytest.fixture
def no_compute(monkeypatch):
    """Any refinement reached is a failure: these errors must come before the work."""
    def boom(*a, **k):
        raise AssertionError("refinement ran before the output check")
    monkeypatch.setattr(pysd.refine, "refine_labels", boom)


def leftovers(d: Path):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- outputs (issue 10 section 4)


def test_out_is_a_directory_even_with_force(capsys, data, no_compute):
    d = data[0]
    (d / "out.npz").mkdir()
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", d / "out.npz", "--force")
    one_line_error(rc, err, "is a directory")


def test_out_parent_is_a_file(capsys, data, no_compute):
    d = data[0]
    (d / "afile").write_text("x")
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", d / "afile" / "sub" / "out.npz")
    one_line_error(rc, err, "is a file, not a directory")
    assert (d / "afile").read_text() == "x"


def _read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores chmod: then a read-only sysfs)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for cand in (ro, Path("/sys"), Path("/proc/sys")):
        try:
            (cand / ".pysd_probe").touch()
            (cand / ".pysd_probe").unlink()
        except OSError:
            return cand
    pytest.fail("no read-only directory available to test with")


def test_read_only_directory_is_reported_before_the_work(capsys, data, no_compute):
    d = data[0]
    ro = _read_only_dir(d)
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", ro / "out.npz")
    one_line_error(rc, err, "cannot write to")


def test_csv_target_is_a_directory_leaves_nothing_behind(capsys, data, no_compute):
    d = data[0]
    (d / "out.csv").mkdir()
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", d / "out.npz", "--csv", "--force")
    one_line_error(rc, err, "out.csv", "is a directory")
    assert not (d / "out.npz").exists() and leftovers(d) == []


def test_failure_during_the_work_keeps_the_old_file_and_no_partial(capsys, data, monkeypatch):
    d = data[0]
    (d / "out.npz").write_bytes(b"keep me")

    def fail(*a, **k):
        raise ValueError("propagate: something the user can fix")
    monkeypatch.setattr(pysd.refine, "refine_labels", fail)
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", d / "out.npz", "--csv", "--force")
    one_line_error(rc, err, "something the user can fix")
    assert (d / "out.npz").read_bytes() == b"keep me"
    assert not (d / "out.csv").exists() and leftovers(d) == []


def test_outputs_are_created_with_the_umask_mode(capsys, data):
    d = data[0]
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", d / "new" / "out.npz", "--k", 5)
    assert rc == 0, err
    mask = os.umask(0)
    os.umask(mask)
    assert (d / "new" / "out.npz").stat().st_mode & 0o777 == 0o666 & ~mask
    assert leftovers(d / "new") == []


def test_huge_num_classes_is_refused_naming_the_size(capsys, data, no_compute):
    d = data[0]
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", d / "o.npz", "--num-classes", 10**12)
    one_line_error(rc, err, "--num-classes", "GiB")
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", d / "o.npz", "--num-classes", "1e12")
    assert rc == 2 and err.count("\n") == 1 and "--num-classes" in err
    assert not (d / "o.npz").exists() and leftovers(d) == []


def test_a_huge_label_value_is_a_class_not_an_allocation(capsys, data):
    d, x, noisy, clean = data
    big = np.where(noisy == 3, 10**12, noisy)
    np.save(d / "big.npy", big)
    rc, out, err = run(capsys, "refine", d / "f.npy", d / "big.npy", "--out", d / "o.npz", "--k", 8)
    assert rc == 0, err
    assert err.count("\n") == 1 and "warning" in err and "sorted order" in err
    r = np.load(d / "o.npz")
    assert list(r["classes"]) == [0, 1, 2, 10**12]
    truth = np.where(clean == 3, 10**12, clean)
    assert (r["labels"] == truth).mean() > 0.95


def test_empty_csv_is_one_line(capsys, data, no_compute):
    d = data[0]
    (d / "empty.csv").write_text("")
    rc, _, err = run(capsys, "refine", d / "empty.csv", d / "l.npy", "--out", d / "o.npz")
    one_line_error(rc, err, "empty")


def test_bad_option_value_is_one_line(capsys, data):
    d = data[0]
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", d / "o.npz", "--k", "ten")
    one_line_error(rc, err, "--k")


@pytest.mark.parametrize("argv,needle", [
    (["--k", "0"], "--k"), (["--alpha", "1.5"], "--alpha"), (["--max-iter", "0"], "--max-iter"),
    (["--power", "nan"], "--power"), (["--num-classes", "0"], "--num-classes")])
def test_bad_numbers_are_one_line(capsys, data, no_compute, argv, needle):
    d = data[0]
    rc, _, err = run(capsys, "refine", d / "f.npy", d / "l.npy", "--out", d / "o.npz", *argv)
    one_line_error(rc, err, needle)


def test_demo_dataset_too_small_or_absurd_label(capsys, tmp_path):
    x, _, clean = blobs(n=6)
    np.savez(tmp_path / "six.npz", X=x, y=clean)
    rc, _, err = run(capsys, "demo", "--dataset", tmp_path / "six.npz", "--out-dir", tmp_path / "o", "--no-progress")
    one_line_error(rc, err, "at least 50 samples")
    x, _, clean = blobs(n=200)
    clean[0] = 10**12
    np.savez(tmp_path / "absurd.npz", X=x, y=clean)
    rc, _, err = run(capsys, "demo", "--dataset", tmp_path / "absurd.npz", "--out-dir", tmp_path / "o",
                     "--no-progress")
    assert rc == 2 and "5 per class" in err and err.count("error") == 1
    assert not (tmp_path / "o" / "demo.png").exists()


def test_demo_out_dir_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    rc, _, err = run(capsys, "demo", "--out-dir", tmp_path / "f", "--no-progress")
    one_line_error(rc, err, "is a file")


def test_demo_does_not_clobber_without_force(capsys, tmp_path):
    (tmp_path / "demo.json").write_text("mine")
    rc, _, err = run(capsys, "demo", "--out-dir", tmp_path, "--no-progress")
    one_line_error(rc, err, "--force")
    assert (tmp_path / "demo.json").read_text() == "mine" and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- the files people have (issue 13.6)


def _refine(capsys, d, feats, labels, *extra):
    rc, out, err = run(capsys, "refine", feats, labels, "--out", d / "o.npz", "--k", 8, "--force", *extra)
    assert rc == 0, err
    return np.load(d / "o.npz"), out, err


def test_string_labels_round_trip(capsys, data):
    d, x, noisy, clean = data
    names = np.array(["cat", "dog", "eel", "fox"])
    np.savez(d / "s.npz", features=x, labels=names[noisy])
    r, out, err = _refine(capsys, d, d / "s.npz", d / "s.npz", "--csv")
    assert "strings: 4 classes" in err and err.count("\n") == 1
    assert r["labels"].dtype.kind == "U" and (r["labels"] == names[clean]).mean() > 0.95
    assert list(r["classes"]) == list(names) and (r["given_labels"] == names[noisy]).all()
    assert "  cat" in out
    rows = (d / "o.csv").read_text().splitlines()
    assert rows[0].startswith("index,given_label,refined_label") and rows[1].split(",")[1] == names[noisy[0]]


def test_one_based_labels_warn_and_keep_their_values(capsys, data):
    d, x, noisy, clean = data
    np.save(d / "l1.npy", noisy + 1)
    r, _, err = _refine(capsys, d, d / "f.npy", d / "l1.npy")
    assert "1-based" in err
    r0, _, _ = _refine(capsys, d, d / "f.npy", d / "l.npy")
    assert (r["labels"] == r0["labels"] + 1).all() and (r["label_ids"] == r0["labels"]).all()
    assert r["scores"].shape == (len(x), 4)  # no empty class 0


def test_one_based_labels_with_num_classes_are_ids(capsys, data):
    d, x, noisy, _ = data
    np.save(d / "l1.npy", noisy + 1)
    r, _, err = _refine(capsys, d, d / "f.npy", d / "l1.npy", "--num-classes", 5)
    assert err == "" and r["scores"].shape == (len(x), 5) and (r["scores"][:, 0] == 0).all()


def test_unlabelled_rows_get_labels(capsys, data):
    d, x, noisy, clean = data
    part = noisy.copy()
    part[::3] = -1
    np.save(d / "part.npy", part)
    r, out, _ = _refine(capsys, d, d / "f.npy", d / "part.npy")
    assert "(80 unlabelled)" in out
    assert (r["given_labels"][::3] == -1).all() and (r["labels"][::3] >= 0).all()
    assert (r["labels"][::3] == clean[::3]).mean() > 0.9
    assert not np.isin(r["issues"], np.arange(0, len(x), 3)).any()


def test_csv_with_header_and_label_column(capsys, data):
    d, x, noisy, _ = data
    names = np.array(["cat", "dog", "eel", "fox"])
    lines = [",".join([f"f{j}" for j in range(x.shape[1])] + ["label"])]
    lines += [",".join([repr(float(v)) for v in row] + [names[lab]]) for row, lab in zip(x, noisy)]
    (d / "t.csv").write_text("\n".join(lines) + "\n")
    r, _, _ = _refine(capsys, d, d / "t.csv", d / "t.csv")
    np.savez(d / "s.npz", features=x, labels=names[noisy])
    r2, _, _ = _refine(capsys, d, d / "s.npz", d / "s.npz")
    assert (r["labels"] == r2["labels"]).all()


def test_numeric_csv_with_header_row(capsys, data):
    d, x, noisy, _ = data
    np.savetxt(d / "f.csv", x, delimiter=",", header=",".join(f"c{j}" for j in range(x.shape[1])), comments="")
    np.savetxt(d / "l.csv", noisy, fmt="%d", header="noisy_label", comments="")
    r, _, _ = _refine(capsys, d, d / "f.csv", d / "l.csv")
    r0, _, _ = _refine(capsys, d, d / "f.npy", d / "l.npy")
    assert (r["labels"] == r0["labels"]).all()
    rc, _, err = run(capsys, "refine", d / "f.csv", d / "l.csv", "--out", d / "x.npz", "--header", "no")
    one_line_error(rc, err, "must be")


def test_pt_dict_and_parquet(capsys, data):
    import pyarrow as pa  # the parquet extra; the test extra installs it
    import pyarrow.parquet as pq

    d, x, noisy, _ = data
    torch.save({"embeddings": torch.from_numpy(x), "targets": torch.from_numpy(noisy)}, d / "d.pt")
    r_pt, _, _ = _refine(capsys, d, d / "d.pt", d / "d.pt")
    table = pa.table({"embedding": list(x), "label": noisy})
    pq.write_table(table, d / "d.parquet")
    r_pq, _, _ = _refine(capsys, d, d / "d.parquet", d / "d.parquet")
    cols = {f"f{j}": x[:, j] for j in range(x.shape[1])}
    pq.write_table(pa.table({**cols, "y": noisy}), d / "w.parquet")
    r_w, _, _ = _refine(capsys, d, d / "w.parquet", d / "w.parquet")
    r0, _, _ = _refine(capsys, d, d / "f.npy", d / "l.npy")
    for r in (r_pt, r_pq, r_w):
        assert (r["labels"] == r0["labels"]).all()


def test_noise_rate_is_an_estimate(capsys, data):
    d, x, noisy, clean = data
    r, out, _ = _refine(capsys, d, d / "f.npy", d / "l.npy")
    est = estimate_noise_rate(r["oos_scores"], noisy)
    true = (noisy != clean).mean()
    assert abs(est - true) < 0.06
    assert f"estimated noise rate: {est:.3f}" in out


def test_noise_rate_by_hand():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 1, 1, 0])
    # thresholds: class 0 mean p0 over rows labelled 0 = (0.9 + 0.6) / 2 = 0.75; class 1: (0.2 + 0.7) / 2 = 0.45
    # row 1 (given 1): p0 = 0.8 >= 0.75 and p1 = 0.2 < 0.45 -> confidently 0: an issue; the others keep theirs
    assert estimate_noise_rate(p, y) == 0.25


@pytest.mark.parametrize("raw,ids,classes", [
    (np.array([2, 0, 1]), [2, 0, 1], [0, 1, 2]),
    (np.array([3, 1, 2, -1]), [2, 0, 1, -1], [1, 2, 3]),
    (np.array([0.0, np.nan, 7.0]), [0, -1, 1], [0, 7]),
    (np.array(["b", "", "a"]), [1, -1, 0], ["a", "b"]),
])
def test_encode_labels(raw, ids, classes):
    lab = encode_labels(raw)
    assert lab.ids.tolist() == ids and lab.classes.tolist() == classes
    assert lab.decode(lab.ids).tolist() == [v if i >= 0 else ("" if raw.dtype.kind == "U" else -1)
                                            for v, i in zip(raw.tolist(), ids)]


def test_demo_reads_string_labels_from_a_csv_with_header(tmp_path):
    x, _, clean = blobs(n=120, c=3)
    names = np.array(["a", "b", "c"])
    lines = ["x0,x1,x2,x3,x4,x5,x6,x7,label"] + [",".join([f"{v:.5f}" for v in row] + [names[c]])
                                                   for row, c in zip(x, clean)]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    xx, y, classes = load_dataset(str(tmp_path / "d.csv"))
    assert xx.shape == (120, 8) and list(classes) == ["a", "b", "c"] and (y == clean).all()


def test_every_option_has_help_and_version_prints(capsys):
    import argparse

    import pysd
    from pysd.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"pysd {name} {action.option_strings or action.dest}: no help text"
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.strip() == f"pysd {pysd.__version__}"
