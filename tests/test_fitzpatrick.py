import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import FITZPATRICK_CSV, REFERENCE_COUNTS, REPO
from PIL import Image

from fairskin.config import build_config
from fairskin.data import DataError
from fairskin.data.fitzpatrick import build_manifest, split_sizes, subclass_table
from fairskin.data.prepare import reference_counts


def _config(tmp_path=None, *extra):
    overrides = ["data.source=fitzpatrick17k", f"data.csv_path={FITZPATRICK_CSV}"]
    if tmp_path is not None:
        overrides.append(f"runtime.runs_root={tmp_path}")
    return build_config("demo", overrides=overrides + list(extra))


def test_default_binning_counts_equal_the_reference_table():
    manifest, report = build_manifest(_config().data, seed=0, with_images=False)
    table = subclass_table(manifest)
    reference = pd.read_csv(REFERENCE_COUNTS).sort_values(["group", "disease"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(table[["group", "disease", "count"]], reference, check_dtype=False)
    assert table["count"].min() == 12 and table["count"].max() == 412
    assert report.rows_unknown_fst > 0  # unknown in both columns: dropped, and counted


def test_shipped_count_table_is_the_reference():
    reference = pd.read_csv(REFERENCE_COUNTS)
    assert reference_counts() == {(r.group, r.disease): int(r["count"]) for _, r in reference.iterrows()}


def test_exact_labels_only():
    manifest, _ = build_manifest(_config().data, seed=0, with_images=False)
    assert set(manifest["disease"]) == set(_config().data.diseases)
    csv = pd.read_csv(FITZPATRICK_CSV)
    near = csv[csv["label"].isin(["pustular psoriasis", "basal cell carcinoma morpheiform"])]["md5hash"]
    assert len(near) > 0 and not set(near) & set(manifest["id"])


def test_splits_follow_the_rule_and_the_seed():
    a, _ = build_manifest(_config().data, seed=0, with_images=False)
    b, _ = build_manifest(_config().data, seed=0, with_images=False)
    c, _ = build_manifest(_config().data, seed=1, with_images=False)
    for row in subclass_table(a).itertuples():
        assert (row.train, row.val, row.test) == split_sizes(row.count)
    key = ["id", "split"]
    assert a.sort_values("id")[key].equals(b.sort_values("id")[key])
    assert (
        not a.sort_values("id")["split"]
        .reset_index(drop=True)
        .equals(c.sort_values("id")["split"].reset_index(drop=True))
    )
    # Row order of the CSV does not matter: the split is a function of the ids.
    assert split_sizes(12) == (10, 1, 1) and split_sizes(412) == (330, 41, 41)


def test_binning_options_and_qc_filter_change_counts():
    base = subclass_table(build_manifest(_config().data, 0, False)[0])["count"].sum()
    scale = subclass_table(build_manifest(_config(None, "data.binning=scale").data, 0, False)[0])
    centaur = subclass_table(build_manifest(_config(None, "data.binning=centaur").data, 0, False)[0])
    assert scale["count"].sum() != base and centaur["count"].sum() < base
    qc_manifest, report = build_manifest(_config(None, "data.drop_qc_wrongly_labelled=true").data, 0, False)
    assert report.rows_qc_dropped > 0
    assert len(qc_manifest) == base - report.rows_qc_dropped


def test_minimum_count_drops_small_subclasses():
    manifest, report = build_manifest(_config(None, "data.min_subclass_count=60").data, 0, False)
    dropped = {(g, d) for g, d, _ in report.subclasses_below_minimum}
    assert ("African", "basal cell carcinoma") in dropped and ("African", "psoriasis") not in dropped
    assert subclass_table(manifest)["count"].min() >= 60


# --------------------------------------------------------------------------- bad CSVs


def _write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _row(i, label="psoriasis", scale=2, centaur=2, qc=""):
    return {
        "md5hash": hashlib.md5(str(i).encode()).hexdigest(),
        "fitzpatrick_scale": scale,
        "fitzpatrick_centaur": centaur,
        "label": label,
        "qc": qc,
    }


def test_bad_fst_value_names_line_and_column(tmp_path):
    rows = [_row(i) for i in range(5)]
    rows[3]["fitzpatrick_scale"] = 7
    csv = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as err:
        build_manifest(_config(None, f"data.csv_path={csv}").data, 0, False)
    assert "line 5" in str(err.value) and "fitzpatrick_scale" in str(err.value) and "'7'" in str(err.value)


def test_fst_unknown_in_both_columns_is_dropped_and_counted(tmp_path):
    rows = [_row(i) for i in range(20)] + [_row(100 + i, scale=-1, centaur=-1) for i in range(3)]
    csv = _write_csv(tmp_path / "unknown.csv", rows)
    manifest, report = build_manifest(_config(None, f"data.csv_path={csv}").data, 0, False)
    assert report.rows_unknown_fst == 3 and len(manifest) == 20


def test_missing_column_and_bad_id(tmp_path):
    csv = _write_csv(tmp_path / "nocol.csv", [{k: v for k, v in _row(0).items() if k != "qc"}])
    with pytest.raises(DataError, match=r"missing column\(s\) \['qc'\]"):
        build_manifest(_config(None, f"data.csv_path={csv}").data, 0, False)
    rows = [_row(0), {**_row(1), "md5hash": "../../etc/passwd"}]
    csv = _write_csv(tmp_path / "badid.csv", rows)
    with pytest.raises(DataError, match="line 3, column md5hash.*32 hexadecimal"):
        build_manifest(_config(None, f"data.csv_path={csv}").data, 0, False)


# --------------------------------------------------------------------------- images


@pytest.fixture()
def image_dataset(tmp_path):
    """A 3-group x 1-disease CSV of 14 rows per subclass, with a PNG per row."""
    root = tmp_path / "images"
    root.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for g, fst in enumerate((1, 3, 5)):
        for i in range(14):
            row = _row(g * 100 + i, scale=fst, centaur=fst)
            rows.append(row)
            pixels = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"{row['md5hash']}.{'jpg' if i % 2 else 'png'}")
    csv = _write_csv(tmp_path / "meta.csv", rows)
    return csv, root, rows


def _image_config(csv, root, *extra):
    return build_config(
        "demo", overrides=["data.source=fitzpatrick17k", f"data.csv_path={csv}", f"data.image_root={root}", *extra]
    ).data


def test_images_are_found_by_md5_with_any_extension(image_dataset):
    csv, root, rows = image_dataset
    manifest, report = build_manifest(_image_config(csv, root), 0)
    assert len(manifest) == len(rows) and manifest["path"].str.startswith(str(root.resolve())).all()
    assert report.missing_images == [] and report.unreadable_images == []


def test_missing_and_corrupt_images_fail_with_counts_and_ids(image_dataset):
    csv, root, rows = image_dataset
    missing_id, corrupt_id = rows[0]["md5hash"], rows[1]["md5hash"]
    next(root.glob(f"{missing_id}.*")).unlink()
    next(root.glob(f"{corrupt_id}.*")).write_bytes(b"not an image at all")
    with pytest.raises(DataError) as err:
        build_manifest(_image_config(csv, root), 0)
    text = str(err.value)
    assert f"1 missing (e.g. {missing_id})" in text and f"1 unreadable (e.g. {corrupt_id})" in text
    assert "data.on_bad_image=skip" in text
    manifest, report = build_manifest(_image_config(csv, root, "data.on_bad_image=skip"), 0)
    assert len(manifest) == len(rows) - 2 and report.missing_images == [missing_id]


def test_path_outside_the_image_root_is_rejected(image_dataset, tmp_path):
    csv, root, rows = image_dataset
    victim = rows[2]["md5hash"]
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(outside)
    next(root.glob(f"{victim}.*")).unlink()
    (root / f"{victim}.png").symlink_to(outside)
    with pytest.raises(DataError, match=f"image {victim}: .* outside the image root"):
        build_manifest(_image_config(csv, root), 0)


def test_near_duplicates_stay_in_one_split(image_dataset):
    csv, root, rows = image_dataset
    # Make 5 Caucasian rows copies of one image (slightly noised): one near-duplicate cluster.
    group_rows = [r for r in rows if r["fitzpatrick_scale"] == 1]
    base = np.asarray(Image.open(next(root.glob(f"{group_rows[0]['md5hash']}.*"))).convert("RGB"))
    for r in group_rows[1:5]:
        next(root.glob(f"{r['md5hash']}.*")).unlink()
        Image.fromarray(base).save(root / f"{r['md5hash']}.png")
    ids = {r["md5hash"] for r in group_rows[:5]}
    for seed in range(6):
        manifest, _ = build_manifest(_image_config(csv, root, "data.near_duplicate_max_distance=4"), seed)
        assert manifest[manifest["id"].isin(ids)]["split"].nunique() == 1


def test_counts_cli_prints_the_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fairskin", "data", "counts", "--csv", str(FITZPATRICK_CSV), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    rows = json.loads(out.stdout)["subclasses"]
    assert len(rows) == 15
    counts = {(r["group"], r["disease"]): r["count"] for r in rows}
    assert min(counts.values()) == 12 and max(counts.values()) == 412
    assert counts[("African", "basal cell carcinoma")] == 12 and counts[("Caucasian", "psoriasis")] == 412
    assert all(r["train"] + r["val"] + r["test"] == r["count"] for r in rows)
    text = subprocess.run(
        [sys.executable, "-m", "fairskin", "data", "counts", "--csv", str(FITZPATRICK_CSV), "--binning", "scale"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert "scale binning" in text and "psoriasis" in text
    bad = subprocess.run(
        [sys.executable, "-m", "fairskin", "data", "counts", "--csv", str(tmp_path / "no.csv")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "no.csv: file not found" in bad.stderr
