"""Phase 2 (download) against a real local HTTP server: caching, reasons, limits, retries and resumability."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from core.config import load_settings
from core.errors import MissingInputError
from core.model_config import ModelSpec
from pipeline.base import PipelineContext
from pipeline.download import DownloadPhase, download_report_path
from pipeline.image_cache import USER_AGENT
from pipeline.runner import PhaseStatus, run_phases
from pipeline.state import StagedProduct
from tests.fake_images import huge_png, jpeg_bytes, png_bytes
from tests.http_server import Reply
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
FAST = dict(download_timeout=0.5, download_retries=2, download_backoff=0.01, cache_image_size=64,
            download_workers=4, download_per_host=2)


@pytest.fixture
def make_ctx(tmp_path):
    """A PipelineContext for model ``general`` under one temp root (reruns share the cache)."""

    def make(**overrides) -> PipelineContext:
        settings = load_settings(root=tmp_path / "root", **{**FAST, **overrides})
        return PipelineContext(settings=settings, spec=ModelSpec(name="general"), progress=False)

    return make


def _write_products(ctx: PipelineContext, *image_lists: list[str], preview: str | None = None) -> None:
    """Stage products as the validation phase would."""
    products = [StagedProduct(id=str(1001 + i), row=i + 2, title=f"product {i}", category="mugs", images=images,
                              preview_image=preview or images[0], extra={}) for i, images in enumerate(image_lists)]
    state = ctx.state()
    with state.db.write() as conn:
        state.replace_staged(conn)
        state.stage(conn, products)
        state.set_meta(conn, "staged", json.dumps([p.images for p in products]))


def _manifest(ctx: PipelineContext) -> dict:
    """Every staged ref's recorded download state, as {"images": {ref: entry}}."""
    state = ctx.state()
    refs = [r for chunk in state.refs() for r in chunk]
    entries = state.images(refs)
    hidden = ("settings", "ref", "transient", "size", "mtime_ns")
    return {"images": {ref: {k: v for k, v in entries[ref].items() if v is not None and k not in hidden}
                       for ref in refs if ref in entries}}


def _run(ctx: PipelineContext):
    result = DownloadPhase().run(ctx)
    return result, _manifest(ctx)


def _local(ctx: PipelineContext, rel: str, data: bytes) -> str:
    path = ctx.paths.data / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reasons(manifest: dict) -> dict[str, str]:
    return {ref: e.get("reason", e["status"]) for ref, e in manifest["images"].items()}


def test_good_images_are_cached_downscaled_and_recorded(http_server, make_ctx):
    ctx = make_ctx()
    big, small, local = jpeg_bytes(320, 200, seed=1), png_bytes(50, 40, seed=2), jpeg_bytes(200, 400, seed=3)
    http_server.routes.update({"/big.jpg": Reply(big), "/small.png": Reply(small, content_type="image/png")})
    big_url, small_url = http_server.url("/big.jpg"), http_server.url("/small.png")
    local_ref = _local(ctx, "images/1001_0.jpg", local)
    _write_products(ctx, [big_url, local_ref], [small_url], preview=big_url)

    result, manifest = _run(ctx)

    assert (result.ok, result.failed, result.complete) == (3, Counter(), True)
    assert result.details == {"refs": 3, "downloaded": 2, "reused": 0, "local": 1, "transient": 0,
                              "failed_local": 0, "failed_remote": 0}
    assert _report(ctx) == {"ok": 3, "failed": {}}
    expected = {big_url: (big, (102, 64)), local_ref: (local, (64, 128)), small_url: (small, (50, 40))}
    for ref, (original, size) in expected.items():
        entry = manifest["images"][ref]
        name = _sha(original)
        assert entry == {"status": "ok", "cache": f"{name[:2]}/{name}.jpg", "width": size[0],
                         "height": size[1], "bytes": len(original)}
        with Image.open(ctx.paths.image_cache / entry["cache"]) as img:
            assert (img.format, img.size) == ("JPEG", size)  # shorter side 64, never enlarged
    assert http_server.count("/big.jpg") == 1  # the preview duplicates an image: fetched once
    assert http_server.requests[0].headers["User-Agent"] == USER_AGENT


def test_bad_refs_are_recorded_with_stable_reasons(http_server, make_ctx, caplog):
    ctx = make_ctx(max_image_bytes=60_000)  # the pixel bomb PNG is ~50 KB
    routes = {
        "/missing.jpg": (None, "http 404"),
        "/forbidden.jpg": (Reply(b"", status=403), "http 403"),
        "/page.html": (Reply.html(), "not an image (text/html)"),
        "/truncated.jpg": (Reply(jpeg_bytes(300, 200)[:1500]), "truncated image"),
        "/bomb.png": (Reply(huge_png(), content_type="image/png"), "too many pixels"),
        "/loop-a": (Reply.redirect("/loop-b"), "too many redirects"),
        "/loop-b": (Reply.redirect("/loop-a"), "too many redirects"),
        "/to-file": (Reply.redirect("file:///etc/passwd"), "bad scheme"),
        "/declared-big.jpg": (Reply(b"\xff" * 70_000), "too large"),
        "/streamed-big.jpg": (Reply(b"\xff" * 200_000, length=-1), "too large"),
        "/garbage.bin": (Reply(b"garbage!" * 10, content_type="application/octet-stream"), "not an image"),
        "/untyped": (Reply(b"garbage!" * 10, content_type=None), "not an image"),
    }
    http_server.routes.update({p: r for p, (r, _) in routes.items() if r is not None})
    (ctx.paths.data.parent / "secret.jpg").parent.mkdir(parents=True, exist_ok=True)
    (ctx.paths.data.parent / "secret.jpg").write_bytes(jpeg_bytes())
    expected = {http_server.url(p): reason for p, (_, reason) in routes.items()}
    expected |= {
        "file:///etc/passwd": "bad scheme",
        f"ftp://127.0.0.1:{http_server.port}/a.jpg": "bad scheme",
        "../secret.jpg": "path escapes model folder",
        "images/../../secret.jpg": "path escapes model folder",
        "images/nope.jpg": "file not found",
        "http:///nohost.jpg": "bad url",
        _local(ctx, "images/huge.jpg", b"\xff" * 70_000): "too large",
        _local(ctx, "images/notes.txt", b"just some text"): "not an image",
    }
    _write_products(ctx, list(expected))
    caplog.set_level(logging.WARNING, logger="pipeline.download")

    result, manifest = _run(ctx)

    assert _reasons(manifest) == expected
    assert all(isinstance(e["detail"], str) for e in manifest["images"].values())
    assert (result.ok, result.failed, result.complete) == (0, Counter(expected.values()), True)
    assert _report(ctx) == {"ok": 0, "failed": dict(Counter(expected.values()))}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "pipeline.download"]
    assert len(warned) == len(expected)
    assert all(any(ref in line and reason in line for line in warned) for ref, reason in expected.items())
    assert http_server.count("/bomb.png") == 1  # permanent failures are not retried


def test_redirects_to_a_good_image_are_followed(http_server, make_ctx):
    ctx = make_ctx()
    image = jpeg_bytes(seed=5)
    http_server.routes.update({"/new.jpg": Reply(image), "/old.jpg": Reply.redirect("/new.jpg", 301),
                               "/abs.jpg": Reply.redirect(http_server.url("/new.jpg"), 307)})
    _write_products(ctx, [http_server.url("/old.jpg"), http_server.url("/abs.jpg")])

    result, manifest = _run(ctx)

    assert result.ok == 2 and not result.failed
    entries = list(manifest["images"].values())
    assert entries[0]["cache"] == entries[1]["cache"] == f"{_sha(image)[:2]}/{_sha(image)}.jpg"
    assert http_server.count("/new.jpg") == 2


def test_retryable_statuses_are_retried_until_success(http_server, make_ctx):
    ctx = make_ctx()
    http_server.routes.update({
        "/flaky.jpg": [Reply(status=503), Reply(jpeg_bytes(seed=6))],
        "/busy.jpg": [Reply(status=429, headers={"Retry-After": "0"}), Reply(jpeg_bytes(seed=7))],
    })
    _write_products(ctx, [http_server.url("/flaky.jpg"), http_server.url("/busy.jpg")])

    result, _ = _run(ctx)

    assert (result.ok, result.complete) == (2, True)
    assert http_server.count("/flaky.jpg") == http_server.count("/busy.jpg") == 2


def test_persistent_server_error_is_transient_and_only_it_is_retried_on_rerun(http_server, make_ctx):
    ctx = make_ctx(download_retries=2)
    http_server.routes.update({"/down.jpg": Reply(status=503), "/fine.jpg": Reply(jpeg_bytes(seed=8))})
    down, fine = http_server.url("/down.jpg"), http_server.url("/fine.jpg")
    _write_products(ctx, [down, fine])

    first, manifest = _run(ctx)

    assert (first.ok, first.failed, first.complete) == (1, Counter({"http 503": 1}), False)
    assert first.details["transient"] == 1 and manifest["images"][down]["reason"] == "http 503"
    assert http_server.count("/down.jpg") == 3  # the first try + download_retries
    http_server.routes["/down.jpg"] = Reply(jpeg_bytes(seed=9))

    second, _ = _run(ctx)

    assert (second.ok, second.complete) == (2, True)
    assert (second.details["downloaded"], second.details["reused"]) == (1, 1)
    assert http_server.count("/fine.jpg") == 1 and http_server.count("/down.jpg") == 4


def test_slow_server_times_out_as_transient(http_server, make_ctx):
    ctx = make_ctx(download_timeout=0.3, download_retries=1)
    http_server.routes["/slow.jpg"] = Reply(jpeg_bytes(), delay=10)
    _write_products(ctx, [http_server.url("/slow.jpg")])

    start = time.monotonic()
    result, _ = _run(ctx)

    # two tries cut at 0.3 s each, plus the phase's own start under the suite's load (2.504 s was seen in CI);
    # a try that waited for the server would alone take 10 s
    assert time.monotonic() - start < 6
    assert (result.failed, result.complete) == (Counter({"timeout": 1}), False)
    assert http_server.count("/slow.jpg") == 2


def test_slow_drip_body_is_cut_by_the_per_image_deadline(http_server, make_ctx):
    ctx = make_ctx(download_timeout=0.3, download_retries=0)
    # every piece arrives well within the read timeout, but the whole body would take minutes
    http_server.routes["/drip.jpg"] = Reply(b"\xff" * 20_000, drip=0.05, drip_bytes=16)
    _write_products(ctx, [http_server.url("/drip.jpg")])

    start = time.monotonic()
    result, manifest = _run(ctx)

    assert time.monotonic() - start < 6  # the whole body would take a minute; 6 s leaves the phase's start room
    assert (result.failed, result.complete) == (Counter({"timeout": 1}), False)
    assert "deadline" in manifest["images"][http_server.url("/drip.jpg")]["detail"]


def test_connection_failures_are_transient(http_server, make_ctx):
    ctx = make_ctx(download_retries=1)
    closed_port = free_port()  # nothing listens there
    http_server.routes["/hangup.jpg"] = Reply(abort=True)
    http_server.routes["/short.jpg"] = Reply(jpeg_bytes()[:100], length=5000)
    refs = [f"http://127.0.0.1:{closed_port}/a.jpg", http_server.url("/hangup.jpg"), http_server.url("/short.jpg")]
    _write_products(ctx, refs)

    result, manifest = _run(ctx)

    assert set(_reasons(manifest).values()) == {"connection error"}
    assert (result.failed, result.complete) == (Counter({"connection error": 3}), False)


def test_long_retry_after_is_not_waited_for(http_server, make_ctx):
    ctx = make_ctx(download_retries=3)
    http_server.routes["/later.jpg"] = Reply(status=429, headers={"Retry-After": "3600"})
    _write_products(ctx, [http_server.url("/later.jpg")])

    start = time.monotonic()
    result, _ = _run(ctx)

    assert time.monotonic() - start < 6  # an hour asked; 6 s leaves the phase's start room under load
    assert (result.failed, result.complete) == (Counter({"http 429": 1}), False)
    assert http_server.count("/later.jpg") == 1


def test_short_retry_after_is_honoured(http_server, make_ctx):
    ctx = make_ctx()
    http_server.routes["/soon.jpg"] = [Reply(status=503, headers={"Retry-After": "1"}), Reply(jpeg_bytes())]
    _write_products(ctx, [http_server.url("/soon.jpg")])

    start = time.monotonic()
    result, _ = _run(ctx)

    assert result.ok == 1 and time.monotonic() - start >= 0.9


def test_per_host_limit_is_respected_while_hosts_run_in_parallel(http_server, make_ctx):
    ctx = make_ctx(download_workers=8, download_per_host=2)
    refs = []
    for i in range(16):
        http_server.routes[f"/p{i}.jpg"] = Reply(jpeg_bytes(seed=100 + i), delay=0.1)
        refs.append(http_server.url(f"/p{i}.jpg", host="127.0.0.1" if i % 2 else "localhost"))
    _write_products(ctx, refs)

    result, _ = _run(ctx)

    assert result.ok == 16
    assert http_server.max_in_flight == Counter({"127.0.0.1": 2, "localhost": 2})
    assert http_server.max_in_flight_total > 2  # the bound is per host, not global


def test_rerun_makes_no_requests_for_cached_refs(http_server, make_ctx):
    ctx = make_ctx()
    for i in range(5):
        http_server.routes[f"/r{i}.jpg"] = Reply(jpeg_bytes(seed=20 + i))
    local_ref = _local(ctx, "images/a.png", png_bytes(seed=30))
    _write_products(ctx, [http_server.url(f"/r{i}.jpg") for i in range(5)], [local_ref])
    _, first_manifest = _run(ctx)
    http_server.reset()

    result, manifest = _run(ctx)

    assert http_server.total_requests == 0
    assert result.details == {"refs": 6, "downloaded": 0, "reused": 6, "local": 0, "transient": 0,
                              "failed_local": 0, "failed_remote": 0}
    assert manifest == first_manifest


def test_identical_content_at_two_urls_shares_one_cache_file(http_server, make_ctx):
    ctx = make_ctx()
    image = jpeg_bytes(seed=40)
    http_server.routes.update({"/a.jpg": Reply(image), "/b.jpg": Reply(image)})
    _write_products(ctx, [http_server.url("/a.jpg")], [http_server.url("/b.jpg")])

    result, manifest = _run(ctx)

    assert result.ok == 2
    assert len({e["cache"] for e in manifest["images"].values()}) == 1
    assert len([p for p in ctx.paths.image_cache.rglob("*.jpg")]) == 1


def test_edited_local_file_is_read_again(make_ctx):
    ctx = make_ctx()
    ref = _local(ctx, "images/edit.jpg", jpeg_bytes(seed=50))
    _write_products(ctx, [ref])
    _, before = _run(ctx)
    path = ctx.paths.data / ref
    path.write_bytes(jpeg_bytes(seed=51))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a coarse-mtime filesystem still sees it

    result, after = _run(ctx)

    assert result.details["local"] == 1
    assert after["images"][ref]["cache"] != before["images"][ref]["cache"]


def test_lost_cache_file_or_changed_settings_mean_refetch(http_server, make_ctx):
    ctx = make_ctx()
    http_server.routes["/c.jpg"] = Reply(jpeg_bytes(320, 200, seed=60))
    _write_products(ctx, [http_server.url("/c.jpg")])
    _, manifest = _run(ctx)
    (ctx.paths.image_cache / manifest["images"][http_server.url("/c.jpg")]["cache"]).unlink()

    _run(ctx)
    smaller = make_ctx(cache_image_size=32)
    result, manifest = _run(smaller)

    assert http_server.count("/c.jpg") == 3 and result.details["downloaded"] == 1
    assert manifest["images"][http_server.url("/c.jpg")]["height"] == 32
    assert DownloadPhase().fingerprint(ctx) != DownloadPhase().fingerprint(smaller)


def test_fingerprint_follows_the_product_list_and_outputs_name_the_report(make_ctx):
    ctx = make_ctx()
    _write_products(ctx, ["images/a.jpg"])
    before = DownloadPhase().fingerprint(ctx)
    _write_products(ctx, ["images/b.jpg"])

    assert DownloadPhase().fingerprint(ctx) != before
    assert DownloadPhase().outputs(ctx) == [download_report_path(ctx.paths)]


def test_missing_product_list_raises(make_ctx):
    with pytest.raises(MissingInputError, match="validation"):
        DownloadPhase().run(make_ctx())


def test_runner_checkpoints_only_when_nothing_transient_failed(http_server, make_ctx):
    ctx = make_ctx(download_retries=0)
    http_server.routes.update({"/ok.jpg": Reply(jpeg_bytes(seed=70)), "/later.jpg": Reply(status=502)})
    _write_products(ctx, [http_server.url("/ok.jpg"), http_server.url("/later.jpg")])
    checkpoint = ctx.paths.checkpoint(DownloadPhase.name)

    first = run_phases(ctx, [DownloadPhase()])
    assert first[0].status == PhaseStatus.INCOMPLETE and not checkpoint.exists()
    http_server.routes["/later.jpg"] = Reply(jpeg_bytes(seed=71))
    second = run_phases(ctx, [DownloadPhase()])
    assert second[0].status == PhaseStatus.RAN and checkpoint.exists()
    http_server.reset()
    third = run_phases(ctx, [DownloadPhase()])

    assert third[0].status == PhaseStatus.SKIPPED and http_server.total_requests == 0


def test_a_rerun_retries_local_images_that_now_exist_and_skips_when_nothing_changed(http_server, make_ctx):
    ctx = make_ctx()
    http_server.routes["/gone.jpg"] = Reply(status=404)
    gone = http_server.url("/gone.jpg")
    _write_products(ctx, ["images/a.jpg", "images/b.jpg"], [gone])
    checkpoint = ctx.paths.checkpoint(DownloadPhase.name)

    first = run_phases(ctx, [DownloadPhase()])[0]
    assert first.status == PhaseStatus.RAN and checkpoint.exists()
    assert first.result.failed == Counter({"file not found": 2, "http 404": 1})
    assert first.result.examples["file not found"] == ["row 2: images/a.jpg", "row 2: images/b.jpg"]
    assert (first.result.details["failed_local"], first.result.details["failed_remote"]) == (2, 1)
    http_server.reset()
    assert run_phases(ctx, [DownloadPhase()])[0].status == PhaseStatus.SKIPPED  # nothing changed: no requests
    assert http_server.total_requests == 0

    _local(ctx, "images/a.jpg", jpeg_bytes(seed=80))  # the merchant copies one image in
    second = run_phases(ctx, [DownloadPhase()])[0]
    assert second.status == PhaseStatus.RAN and second.result.failed == Counter({"file not found": 1, "http 404": 1})
    assert second.result.details["local"] == 1 and _reasons(_manifest(ctx))["images/a.jpg"] == "ok"
    assert run_phases(ctx, [DownloadPhase()])[0].status == PhaseStatus.SKIPPED

    _local(ctx, "images/b.jpg", b"not an image")  # a broken file fails, then its replacement is read again
    assert run_phases(ctx, [DownloadPhase()])[0].result.failed["file not found"] == 0
    assert run_phases(ctx, [DownloadPhase()])[0].status == PhaseStatus.SKIPPED
    time.sleep(0.01)
    _local(ctx, "images/b.jpg", jpeg_bytes(seed=81))
    fixed = run_phases(ctx, [DownloadPhase()])[0]
    assert fixed.status == PhaseStatus.RAN and fixed.result.failed == Counter({"http 404": 1})


_CHILD = """
from core.config import load_settings
from core.model_config import ModelSpec
from pipeline.base import PipelineContext
from pipeline.download import DownloadPhase
DownloadPhase().run(PipelineContext(settings=load_settings(), spec=ModelSpec(name="general"), progress=False))
"""


def test_sigkill_mid_download_loses_no_finished_image(http_server, make_ctx, tmp_path):
    ctx = make_ctx(download_workers=2, download_per_host=2)
    paths = [f"/k{i}.jpg" for i in range(24)]
    for i, path in enumerate(paths):
        http_server.routes[path] = Reply(jpeg_bytes(seed=200 + i), delay=0.1)
    _write_products(ctx, [http_server.url(p) for p in paths])
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGESEARCH_ROOT": str(ctx.settings.root),
           **{f"IMAGESEARCH_{k.upper()}": str(v) for k, v in FAST.items()}, "IMAGESEARCH_DOWNLOAD_WORKERS": "2"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 20
    while len(_recorded_ok(ctx)) < 6 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = {p for p in paths if http_server.url(p) in _recorded_ok(ctx)}
    assert 6 <= len(done) < len(paths), "kill the child while it is still downloading"
    before = Counter(http_server.counts)

    result, _ = _run(ctx)

    assert result.ok == len(paths) and result.details["reused"] == len(done)
    assert all(http_server.count(p) == before[p] == 1 for p in done)


def _recorded_ok(ctx: PipelineContext) -> set[str]:
    return {r for (r,) in ctx.state().db.reader().execute("SELECT ref FROM images WHERE status='ok'")}


def _report(ctx: PipelineContext) -> dict:
    report = json.loads(download_report_path(ctx.paths).read_text())
    return {"ok": report["ok"], "failed": report["failed"]}
