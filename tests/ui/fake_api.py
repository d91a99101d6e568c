"""A stand-in for the search API (stdlib HTTP server over a demo data folder) for client tests."""

from __future__ import annotations

import csv
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


class FakeCatalogue:
    """Products per model read from ``data/<model>/products.csv``; scores fall with position."""

    def __init__(self, data_dir: Path, models: tuple[str, ...] = ("general", "shirts"),
                 unbuilt: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.products = {m: self._read(data_dir / m / "products.csv") for m in models}
        self.unbuilt = set(unbuilt)
        self.requests: list[tuple[str, str, dict]] = []
        self.base_url = ""  # set by FakeApi: image URLs are absolute, as the real API makes them

    @staticmethod
    def _read(csv_path: Path) -> list[dict]:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def hits(self, model: str, top_k: int, category: str | None = None, first: str | None = None) -> list[dict]:
        rows = [r for r in self.products[model] if not category or r["category"] == category]
        rows.sort(key=lambda r: r["shopify_product_id"] != first)
        return [{"rank": n + 1, "id": r["shopify_product_id"], "title": r["title"], "category": r["category"],
                 "score": round(0.95 - 0.03 * n, 4), "preview_image": r["preview_image"],
                 "image_url": f"{self.base_url}/{model}/products/{r['shopify_product_id']}/image", "model": model,
                 "duplicates": [], "extra": {"price": float(r["price"]), "vendor": r["vendor"]}}
                for n, r in enumerate(rows[:top_k])]


def _response(model: str, hits: list[dict], filename: str | None = None) -> dict:
    return {"model": model, "query_filename": filename, "num_results": len(hits), "search_time_ms": 4.2,
            "results": hits}


class _Handler(BaseHTTPRequestHandler):
    catalogue: FakeCatalogue

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: dict | bytes, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        self.catalogue.requests.append((method, url.path, query))
        status, payload = self._dispatch(method, parts, query, body)
        if isinstance(payload, bytes):
            self._send(status, payload, "image/jpeg")
        else:
            self._send(status, payload)

    def _dispatch(self, method: str, parts: list[str], query: dict, body: bytes) -> tuple[int, dict | bytes]:
        cat = self.catalogue
        if parts == ["health"]:
            return 200, {"status": "healthy", "available_models": len(cat.products),
                         "available_model_names": sorted(cat.products),
                         "total_products": sum(map(len, cat.products.values())),
                         "models": {m: {"products": len(p), "name": m, "built_at": "2025-01-01T00:00:00Z"}
                                    for m, p in cat.products.items()}}
        if parts == ["models"]:
            return 200, {"count": len(cat.products), "models": [{"name": m, "display_name": m.title(),
                                                                 "num_products": len(p),
                          "categories": sorted({r["category"] for r in p}), "searchable": m not in cat.unbuilt,
                          "search_path": f"/{m}/search"} for m, p in cat.products.items()]}
        model = parts[0]
        if model not in cat.products and model != "all":
            return 404, {"detail": f"unknown model {model!r}", "error": "UnknownModelError"}
        if model in cat.unbuilt:
            return 503, {"detail": f"model {model!r} is not built yet", "error": "ModelNotReadyError"}
        top_k = int(query.get("top_k", 10))
        if parts[1:] == ["search"] and method == "POST":
            if b"not an image" in body:
                return 400, {"detail": "uploaded file is not an image", "error": "ImageDecodeError"}
            if model == "all":
                groups = {m: _response(m, cat.hits(m, top_k, query.get("category"))) for m in cat.products}
                merged = sorted(({**h, "model": m} for m, g in groups.items() for h in g["results"]),
                                key=lambda h: -h["score"])[:top_k]
                merged = [{**h, "rank": n} for n, h in enumerate(merged, start=1)]
                return 200, {**_response("all", merged), "per_model": groups}
            return 200, _response(model, cat.hits(model, top_k, query.get("category")), "query.jpg")
        if parts[1:] == ["search", "text"]:
            return 200, _response(model, cat.hits(model, top_k, query.get("category")))
        if len(parts) >= 3 and parts[1] == "products":
            row = next((r for r in cat.products[model] if r["shopify_product_id"] == parts[2]), None)
            if row is None:
                return 404, {"detail": f"no product {parts[2]!r} in {model!r}", "error": "ProductNotFoundError"}
            if parts[3:] == ["image"]:
                return 200, (cat.data_dir / model / row["preview_image"]).read_bytes()
            if parts[3:] == ["similar"]:
                return 200, _response(model, cat.hits(model, top_k, first=parts[2]))
        return 404, {"detail": "Not Found"}

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


class FakeApi:
    """Context manager: serve ``catalogue`` on 127.0.0.1 at a free port; ``url`` is its base URL."""

    def __init__(self, catalogue: FakeCatalogue) -> None:
        handler = type("Handler", (_Handler,), {"catalogue": catalogue})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        catalogue.base_url = self.url
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
