"""Background jobs (real pipeline and evaluation in worker processes, a worker killed mid-run, an API
restart), the query log and the analytics routes, against a real uvicorn."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest

from core.config import load_settings
from tests.api import images
from tests.api.conftest import API_KEY, build_models, start_server, stop_server
from tests.stores import both_stores

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def own(tmp_path, tiny_clip, store_overrides):
    """A private built root and server (jobs rewrite the catalogue), on this test's store."""
    from utils.demo_catalogue import write_demo

    root = tmp_path / "root"
    write_demo(root / "data")
    settings = load_settings(root=root, clip_model=str(tiny_clip), device="cpu", torch_threads=1, api_key=API_KEY,
                             **store_overrides)
    build_models(settings, ("general",))
    server = start_server(settings)
    yield server
    stop_server(server)


def _wait(client, task_id, until, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{task_id}", headers=KEY).json()
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job never reached the state: {job}")


def _done(job):
    return job["status"] in ("succeeded", "failed", "cancelled")


@pytest.mark.slow
@both_stores
def test_rebuild_evaluate_and_embed_jobs_run_the_real_code(own):
    """The workers are other processes: on Milvus they reach the API's catalogue through the shared server."""
    with own.client() as c:
        r = c.post("/general/jobs/rebuild", json={"force": True}, headers=KEY)
        assert r.status_code == 202 and r.json()["status"] == "queued"
        assert c.post("/general/jobs/rebuild", headers=KEY).status_code == 409  # one build per model
        job = _wait(c, r.json()["task_id"], _done)
        assert job["status"] == "succeeded", job
        assert job["progress"] == 1.0 and len(job["counts"]) == 4
        assert all(v["status"] == "ran" for v in job["counts"].values())
        ev = _wait(c, c.post("/general/jobs/evaluate", headers=KEY).json()["task_id"], _done)
        # training/evaluate.py still reads the pre-store embeddings.npy on this branch: whatever it says, the job
        # reports it (succeeded with evaluation.json, or failed with the evaluation's own message)
        assert ev["status"] == "succeeded" or "embeddings.npy" in ev["errors"][-1], ev
        ids = [h["id"] for h in c.get("/general/search/text", params={"q": "mug"}).json()["results"][:3]]
        em = _wait(c, c.post("/general/jobs/embed", json={"ids": [*ids, "nope"]}, headers=KEY).json()["task_id"],
                   _done)
        assert em["status"] == "succeeded" and em["counts"] == {"embedded": 3, "failed": 1, "superseded": 0}
        assert em["errors"] == ["nope: unknown product"]
        listed = c.get("/jobs", headers=KEY).json()
        assert [j["kind"] for j in listed[:3]] == ["embed", "evaluate", "rebuild"]
        assert c.get("/jobs/none", headers=KEY).status_code == 404
        assert c.get("/jobs").status_code == 401


def _freeze_outside_writes(pid: int, folder, jobs_db) -> None:
    """SIGSTOP the worker at a moment it holds no write lock (frozen inside one, it would hold up the API's edits
    until they time out): stopped, released and stopped again until the store's locks are free, and the jobs
    database's (the worker writes its progress there, and the connection that closes last checkpoints it)."""
    for _ in range(500):
        os.killpg(pid, signal.SIGSTOP)
        if _free(folder) and _sqlite_free(jobs_db):
            return
        os.killpg(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("the worker was always inside a write")


def _free(folder) -> bool:
    import fcntl

    from core.milvus_deletes import WRITE_LOCK

    with open(folder / WRITE_LOCK, "a+") as fh:  # the Milvus store's machine-wide write lock
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return _sqlite_free(folder / "catalogue.db")  # the local store's: SQLite's write lock


def _sqlite_free(db) -> bool:
    if not db.is_file():
        return True
    conn = sqlite3.connect(db, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return True


@pytest.mark.slow
@both_stores
def test_an_embed_job_never_reverts_edits_or_deletes_made_while_it_runs(copy_built, tmp_path):
    """The job is frozen (SIGSTOP) mid-run, most likely between reading a product and writing it back; the
    product its progress names (the one in flight) and the next are edited through the API and the two after
    deleted. When it resumes and ends, every acknowledged edit and delete stands."""
    settings = copy_built(tmp_path / "embed", ("general",), api_key=API_KEY)
    server = start_server(settings)
    ids = [f"G{1001 + i}" for i in range(66)]
    try:
        with server.client() as c:
            task = c.post("/general/jobs/embed", json={"ids": ids}, headers=KEY).json()["task_id"]
            job = _wait(c, task, lambda j: j["status"] == "running" and j["pid"] and j["progress"] > 0)
            _freeze_outside_writes(job["pid"], settings.models_dir / "general", settings.jobs_path)
            try:
                at = min(round(c.get(f"/jobs/{task}", headers=KEY).json()["progress"] * 66), 62)
                edited, gone = ids[at:at + 2], ids[at + 2:at + 4]
                for pid in edited:
                    body = {"id": pid, "title": f"Edited {pid}", "images": c.get(f"/general/products/{pid}").json()
                            ["images"]}
                    assert c.post("/general/products", json=body, headers=KEY).status_code == 200
                assert all(c.delete(f"/general/products/{pid}", headers=KEY).status_code == 200 for pid in gone)
            finally:
                os.killpg(job["pid"], signal.SIGCONT)
            done = _wait(c, task, _done)
            assert done["status"] == "succeeded", done
            assert [c.get(f"/general/products/{pid}").json()["title"] for pid in edited] == \
                [f"Edited {pid}" for pid in edited]
            assert [c.get(f"/general/products/{pid}").status_code for pid in gone] == [404, 404]
            counts = done["counts"]
            assert counts["embedded"] + counts["superseded"] + counts["failed"] == 66  # failed: deleted before read
    finally:
        stop_server(server)


def test_the_job_queue_is_bounded_per_model_and_short_jobs_pass_long_ones(copy_built, tmp_path):
    """With the manager paused (nothing starts), a model holds IMAGESEARCH_JOB_QUEUE_MAX waiting jobs: one more
    is a 429 with Retry-After while another model still queues; the embedding of a few products starts
    before the evaluations queued ahead of it."""
    settings = copy_built(tmp_path / "queue", api_key=API_KEY, job_queue_max=3)
    server = start_server(settings)
    jobs = server.app.state.jobs
    jobs.stop()  # the loop that starts jobs: paused for the test, the queue is what it is
    try:
        with server.client() as c:
            first = [c.post("/general/jobs/evaluate", headers=KEY) for _ in range(2)]
            embed = c.post("/general/jobs/embed", json={"ids": ["G1001"]}, headers=KEY)
            assert [r.status_code for r in [*first, embed]] == [202, 202, 202]
            full = c.post("/general/jobs/evaluate", headers=KEY)
            assert full.status_code == 429 and full.headers["Retry-After"] == "30", full.text
            assert full.json()["error"] == "JobQueueFullError" and "3 background jobs waiting" in full.json()["detail"]
            assert c.post("/shirts/jobs/evaluate", headers=KEY).status_code == 202
            order = [j.task_id for j in jobs.waiting() if j.model == "general"]
            assert order == [embed.json()["task_id"], *(r.json()["task_id"] for r in first)]
    finally:
        stop_server(server)


@pytest.mark.slow
def test_a_job_killed_mid_run_is_resumed_after_an_api_restart(own):
    with own.client() as c:
        task = c.post("/general/jobs/rebuild", json={"force": True}, headers=KEY).json()["task_id"]
        job = _wait(c, task, lambda j: j["status"] == "running" and j["pid"])
        os.killpg(job["pid"], signal.SIGSTOP)  # frozen at once: a quick rebuild cannot finish before the kill
    stop_server(own)  # the API goes away...
    os.killpg(job["pid"], signal.SIGKILL)  # ...and so does the worker, mid-run
    time.sleep(0.5)
    again = start_server(own.settings)  # a new API process finds the job "running" with a dead worker
    try:
        with again.client() as c:
            done = _wait(c, task, _done)
            assert done["status"] == "succeeded", done
            assert done["attempts"] == 2 and "attempt 1 interrupted; resumed" in done["errors"]
            assert c.post("/general/search", content=images.jpeg(),
                          headers={"content-type": "image/jpeg"}).status_code == 200
    finally:
        stop_server(again)


@pytest.mark.slow
def test_cancel_stops_a_running_job(own):
    with own.client() as c:
        task = c.post("/general/jobs/rebuild", json={"force": True}, headers=KEY).json()["task_id"]
        _wait(c, task, lambda j: j["status"] == "running")
        assert c.delete(f"/jobs/{task}", headers=KEY).json()["status"] in ("cancelling", "cancelled")
        assert _wait(c, task, _done)["status"] == "cancelled"


def test_query_log_records_searches_without_images_and_summarizes(client, live):
    log = live.app.state.query_log
    for _ in range(3):
        assert client.post("/general/search", content=images.jpeg(), headers={"content-type": "image/jpeg"},
                           params={"top_k": 5}).status_code == 200
    client.get("/general/search/text", params={"q": "mug", "category": "nothing-like-this"})
    assert log.flush()
    conn = sqlite3.connect(live.settings.query_log_path)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(queries)")]
    assert cols == ["ts", "model", "kind", "filters", "latency_ms", "results", "top_ids"]
    rows = conn.execute("SELECT kind, results FROM queries WHERE model = 'general'").fetchall()
    conn.close()
    assert ("image", 5) in rows and ("text", 0) in rows
    body = client.get("/analytics/queries", headers=KEY).json()
    day = next(d for d in body["days"] if d["model"] == "general")
    assert day["queries"] >= 4 and 0 < day["zero_result_rate"] < 1 and day["p95_ms"] >= day["p50_ms"] > 0
    assert day["top_categories"]


def test_query_log_off_and_retention(make_settings):
    from core.query_log import QueryLog, QueryRecord, prune

    off = QueryLog(make_settings(query_log_enabled=False))
    off.start()
    off.record(QueryRecord(model="m", kind="image", latency_ms=1.0, results=0))
    assert not off.path.exists()
    on = QueryLog(make_settings())
    on.start()
    on.record(QueryRecord(model="m", kind="image", latency_ms=1.0, results=0, ts=time.time() - 40 * 86400))
    on.record(QueryRecord(model="m", kind="image", latency_ms=1.0, results=1))
    assert on.flush()
    on.stop()
    conn = sqlite3.connect(on.path)  # the writer applied the 30-day retention: the 40-day-old row is gone
    assert conn.execute("SELECT count(*) FROM queries").fetchone()[0] == 1
    assert prune(conn, time.time() + 1) == 1


def test_catalogue_map_and_clusters(client):
    body = client.get("/general/analytics/map", params={"sample": 40}, headers=KEY).json()
    assert len(body["points"]) == 40 and {"id", "title", "category", "x", "y", "image_url"} <= set(body["points"][0])
    found = client.get("/general/analytics/clusters", params={"k": 4}, headers=KEY).json()["clusters"]
    assert sum(c["size"] for c in found) == 66 and all(0 < c["purity"] <= 1 and c["representatives"] for c in found)


def test_heavy_analytics_are_computed_once_per_catalogue_generation(copy_built, tmp_path):
    settings = copy_built(tmp_path / "root", ("general",), api_key=API_KEY)
    server = start_server(settings)
    ref = next(p for p in (settings.data_dir / "general").rglob("*.jpg") if "image_cache" not in p.parts)
    try:
        with server.client(headers=KEY) as c:
            first = c.get("/general/analytics/map", params={"sample": 30}).json()
            again = c.get("/general/analytics/map", params={"sample": 30}).json()
            assert again["computed_at"] == first["computed_at"] and again["points"] == first["points"]
            groups = [c.get("/general/analytics/clusters", params={"k": 3}).json() for _ in range(2)]
            assert groups[0]["computed_at"] == groups[1]["computed_at"]
            other = c.get("/general/analytics/clusters", params={"k": 4}).json()
            assert other["computed_at"] != groups[0]["computed_at"]  # other parameters, another result
            edit = {"id": "analytics-new", "title": "New mug",
                    "images": [str(ref.relative_to(settings.data_dir / "general"))]}
            assert c.post("/general/products", json=edit).status_code == 200
            after = c.get("/general/analytics/map", params={"sample": 30}).json()
            assert after["generation"] > first["generation"] and after["computed_at"] != first["computed_at"]
    finally:
        stop_server(server)
