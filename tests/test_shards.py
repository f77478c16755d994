import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fairskin.data import DataError
from fairskin.data.images import encode_png
from fairskin.data.shards import (
    INDEX_FILE,
    Vocabulary,
    load_decoded,
    read_index,
    read_metadata,
    read_shard,
    shard_paths,
    write_shards,
)

VOCAB = Vocabulary(("African", "Asian", "Caucasian"), ("lichen planus", "psoriasis"))


def _records(n, size=8):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield {
            "id": f"img-{i:03d}",
            "image": encode_png(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)),
            "group": VOCAB.groups[i % 3],
            "disease": VOCAB.diseases[i % 2],
            "split": "train",
            "fst": 1 + i % 6,
            "source": "synthetic",
            "seed": 1000 + i,
            "variant": "procedural-v1",
        }


def test_round_trip_keeps_pixels_labels_and_order(tmp_path):
    records = list(_records(10))
    paths = write_shards(records, tmp_path, VOCAB, rows_per_shard=4)
    assert [p.name for p in paths] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert read_index(tmp_path)["rows"] == 10
    pixels, meta = load_decoded(tmp_path)
    assert pixels.shape == (10, 8, 8, 3) and pixels.dtype == np.uint8
    assert list(meta["id"]) == [r["id"] for r in records]
    assert list(meta["seed"]) == [r["seed"] for r in records]
    first = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(__import__("io").BytesIO(records[0]["image"])))
    assert np.array_equal(pixels[0], first)
    assert list(read_metadata(tmp_path)["group"]) == [r["group"] for r in records]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("group", "Martian", "group 'Martian' is unknown; expected one of ['African', 'Asian', 'Caucasian']"),
        ("disease", "acne", "disease 'acne' is unknown"),
        ("fst", -1, "fst -1 is not a Fitzpatrick type 1..6"),
        ("split", "holdout", "split 'holdout' is unknown"),
        ("image", b"\x89PNG broken", "undecodable image"),
    ],
)
def test_bad_rows_are_refused_on_write_naming_shard_and_row(tmp_path, field, value, message):
    records = list(_records(6))
    records[5][field] = value
    with pytest.raises(DataError) as err:
        write_shards(records, tmp_path, VOCAB, rows_per_shard=4)
    text = str(err.value)
    assert message in text and "shard-00001.parquet, row 1 (id 'img-005')" in text
    assert not (tmp_path / INDEX_FILE).exists()  # an unfinished folder has no index


def _tamper(path, row, **changes):
    table = pq.read_table(path).to_pylist()
    table[row].update(changes)
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), path)


def test_checksum_mismatch_on_read_names_shard_and_row(tmp_path):
    write_shards(_records(6), tmp_path, VOCAB, rows_per_shard=4)
    other = encode_png(np.zeros((8, 8, 3), np.uint8))
    _tamper(shard_paths(tmp_path)[1], 0, image=other)
    with pytest.raises(DataError, match=r"shard-00001.parquet, row 0 \(id 'img-004'\): sha256 mismatch"):
        load_decoded(tmp_path)


def test_undecodable_and_unknown_label_on_read(tmp_path):
    import hashlib

    write_shards(_records(6), tmp_path, VOCAB, rows_per_shard=4)
    junk = b"garbage bytes"
    _tamper(shard_paths(tmp_path)[0], 2, image=junk, sha256=hashlib.sha256(junk).hexdigest())
    with pytest.raises(DataError, match=r"shard-00000.parquet, row 2 \(id 'img-002'\): undecodable image"):
        read_shard(shard_paths(tmp_path)[0], VOCAB)
    _tamper(shard_paths(tmp_path)[1], 1, disease="acne")
    with pytest.raises(DataError, match=r"shard-00001.parquet, row 1 \(id 'img-005'\): disease 'acne'"):
        read_shard(shard_paths(tmp_path)[1], VOCAB)


def test_folder_without_index_is_refused(tmp_path):
    write_shards(_records(3), tmp_path, VOCAB)
    (tmp_path / INDEX_FILE).unlink()
    with pytest.raises(DataError, match="no index.json; the shard folder is incomplete"):
        load_decoded(tmp_path)


def test_duplicate_ids_are_refused(tmp_path):
    records = list(_records(3))
    records[2]["id"] = records[0]["id"]
    with pytest.raises(DataError, match="id 'img-000' appears twice"):
        write_shards(records, tmp_path, VOCAB)
