"""Load: 32 concurrent clients, a few hundred mixed requests, zero errors, and batching engaged."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.api import images

CLIENTS = 32
PER_CLIENT = 10


def _client_run(url: str, worker: int, payloads: list[bytes]) -> list[int]:
    statuses = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(PER_CLIENT):
            data = payloads[(worker + i) % len(payloads)]
            if i % 5 == 4:
                r = c.post("/all/search", params={"top_k": 5}, files={"file": ("q.jpg", data)})
            elif i % 7 == 6:
                r = c.get("/general/search/text", params={"q": f"red mug {worker}"})
            else:
                model = ("general", "shirts")[(worker + i) % 2]
                r = c.post(f"/{model}/search", params={"top_k": 10}, files={"file": ("q.jpg", data)})
            statuses.append(r.status_code)
    return statuses


def test_32_concurrent_clients_zero_errors(live, client):
    payloads = [images.jpeg(), images.webp(), images.rgba_png(), images.cmyk_jpeg()]
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda w: _client_run(live.url, w, payloads), range(CLIENTS)))
    statuses = [s for r in results for s in r]
    assert len(statuses) == CLIENTS * PER_CLIENT
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert client.get("/health").json()["status"] == "healthy"
    [(batches, queries)] = live.app.state.catalogue.batch_stats().values()
    assert queries > batches  # concurrent queries shared forward passes
