"""What the shopper searches with: a photo (upload, camera, link), words, or a product they liked."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from utils.http_fetch import REFUSED_REASON, AddressGuard, FetchError, FetchPolicy, Fetcher

MAX_QUERY_BYTES = 10_000_000
MAX_WORDS = 200  # refining words a shopper types (the API takes up to 1000 characters)
_FETCH_TIMEOUT = 10.0
_TRUE = {"1", "true", "yes", "on"}


class QueryError(Exception):
    """The query cannot be used as given (bad link, too large, not downloadable)."""


@dataclass(frozen=True)
class Query:
    """``kind`` is image | text | similar; ``signature`` says when a search must be redone."""

    kind: str
    image: bytes | None = None
    filename: str = "query.jpg"
    text: str = ""
    product_model: str = ""
    product_id: str = ""
    product_title: str = ""
    words: str = ""  # a photo refined by words: toward these
    avoid: str = ""  # and away from these

    @property
    def signature(self) -> tuple:
        digest = hashlib.sha1(self.image).hexdigest() if self.image else ""
        return (self.kind, digest, self.text, self.product_model, self.product_id, self.words, self.avoid)

    @property
    def refinement(self) -> str:
        """The refining words as the shopper reads them: “in red”, without “stripes”."""
        parts = ([f"“{self.words}”"] if self.words else []) + ([f"without “{self.avoid}”"] if self.avoid else [])
        return ", ".join(parts)


def image_query(data: bytes, filename: str) -> Query:
    if len(data) > MAX_QUERY_BYTES:
        raise QueryError(f"that image is {len(data) / 1e6:.1f} MB; the limit is {MAX_QUERY_BYTES / 1e6:.0f} MB")
    return Query(kind="image", image=data, filename=filename or "query.jpg")


def refine(query: Query, words: str, avoid: str) -> Query:
    """A photo query with words to move toward and words to avoid (blank: the photo alone)."""
    return replace(query, words=" ".join(words.split())[:MAX_WORDS], avoid=" ".join(avoid.split())[:MAX_WORDS])


def text_query(text: str) -> Query | None:
    text = " ".join(text.split())
    return Query(kind="text", text=text) if text else None


def similar_query(model: str, product_id: str, title: str) -> Query:
    return Query(kind="similar", product_model=model, product_id=str(product_id), product_title=title)


def _filename_from_url(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return name[:100] or "image-from-link.jpg"


def _link_error(err: FetchError) -> QueryError:
    if err.reason in ("bad scheme", "bad url"):
        return QueryError("please paste a full image link starting with http:// or https://")
    if err.reason.startswith("http "):
        return QueryError(f"the link answered with HTTP {err.reason.removeprefix('http ')}")
    if err.reason == REFUSED_REASON:
        return QueryError("that link points inside a private network; please use a public image link")
    if err.reason == "too large":
        return QueryError(f"the linked file is larger than {MAX_QUERY_BYTES / 1e6:.0f} MB")
    return QueryError(f"could not download the image ({err.reason})")


def guard_from_env() -> AddressGuard:
    """The same address rules as the API's settings (IMAGESEARCH_ALLOW_PRIVATE_URLS, IMAGESEARCH_FETCH_ALLOWLIST):
    the UI process reads the environment, not the API's Settings."""
    allow = os.environ.get("IMAGESEARCH_ALLOW_PRIVATE_URLS", "").strip().lower() in _TRUE
    return AddressGuard.from_text(allow, os.environ.get("IMAGESEARCH_FETCH_ALLOWLIST", ""))


def fetch_image(url: str) -> Query:
    """Download an image link on the UI server for an image search, with the pipeline's fetcher
    (http/https only, public addresses only, bounded redirects, size cap, overall deadline)."""
    url = url.strip()
    policy = FetchPolicy(timeout=_FETCH_TIMEOUT, retries=1, max_bytes=MAX_QUERY_BYTES, deadline=3 * _FETCH_TIMEOUT,
                         guard=guard_from_env())
    try:
        with Fetcher(policy) as fetcher:
            data = fetcher.fetch(url)
    except FetchError as err:
        raise _link_error(err) from None
    if not data:
        raise QueryError("the link returned an empty file")
    return image_query(data, _filename_from_url(url))
