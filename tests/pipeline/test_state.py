"""The pipeline's build state: view vectors are kept as float16, and those an earlier release wrote as
float32 still read back."""

from __future__ import annotations

import sqlite3

import numpy as np

from core.sqlite_db import Database
from pipeline.state import BuildState, ImageRecord


def test_view_vectors_are_stored_as_float16_and_float32_ones_still_read(tmp_path):
    path = tmp_path / "catalogue.db"
    old = sqlite3.connect(path)  # the views table as the float32 release created it, with one of its rows
    old.execute("CREATE TABLE views(cache TEXT NOT NULL, model_key TEXT NOT NULL, vector BLOB NOT NULL, "
                "PRIMARY KEY (cache, model_key))")
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    old.execute("INSERT INTO views VALUES ('a.jpg', 'clip', ?)", (x[0].tobytes(),))
    old.commit()
    old.close()
    db = Database(path, "")
    state = BuildState(db)
    state.record([ImageRecord(ref=f"http://shop/{c}", status="ok", cache=c) for c in ("a.jpg", "b.jpg", "c.jpg")],
                 "{}")
    state.save_views("clip", ["b.jpg", "c.jpg"], x[1:])
    got = state.view_vectors([f"http://shop/{c}" for c in ("a.jpg", "b.jpg", "c.jpg")], "clip")
    assert np.array_equal(got["http://shop/a.jpg"][1], x[0])  # the float32 row, bit for bit
    assert np.abs(np.stack([got[f"http://shop/{c}"][1] for c in ("b.jpg", "c.jpg")]) - x[1:]).max() < 1e-3
    widths = dict(db.reader().execute("SELECT cache, length(vector) FROM views").fetchall())
    assert widths == {"a.jpg": 4 * 64, "b.jpg": 2 * 64, "c.jpg": 2 * 64}
    db.close()
