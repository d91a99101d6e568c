"""Bounded, polite HTTP fetching of image bytes: per-host limits, retries, manual redirects, size caps,
and the address guard (no fetch reaches loopback, private or link-local addresses unless allowed)."""

from __future__ import annotations

import email.utils
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions

from utils.address_guard import REFUSED_REASON, AddressGuard, GuardedAdapter, refused

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_OCTET_STREAM = {"application/octet-stream", "binary/octet-stream"}
_RETRY_STATUS = {408, 425, 429}  # plus every 5xx
_MAX_DELAY = 60.0  # no single backoff sleep is longer, whatever the settings or the server say


class FetchError(Exception):
    """An item could not be fetched; ``reason`` is a short stable label, ``transient`` means retry later."""

    def __init__(self, reason: str, detail: str = "", *, transient: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.transient = transient
        self.retry_after = retry_after


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for one fetch. ``deadline`` bounds a whole image: every attempt, hop and backoff."""

    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.5
    max_redirects: int = 5
    max_bytes: int = 20_000_000
    per_host: int = 4
    deadline: float = 160.0
    max_retry_after: float = 10.0
    user_agent: str = f"imagesearch/1 (python-requests/{requests.__version__})"
    guard: AddressGuard = AddressGuard()  # refuses non-public addresses unless told otherwise


def check_url(url: str) -> str:
    """Return the URL's host, or raise FetchError when it is not a usable http(s) URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise FetchError("bad url", str(exc)) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError("bad scheme", f"{parts.scheme or 'no'} scheme in {url[:200]!r}")
    if not host:
        raise FetchError("bad url", f"no host in {url[:200]!r}")
    return host.lower()


class Fetcher:
    """Fetches URLs from many threads: one requests.Session per thread, at most ``per_host`` at once per host."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []
        self._hosts: dict[str, threading.BoundedSemaphore] = {}

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def fetch(self, url: str) -> bytes:
        """The body of ``url`` (redirects followed), retrying transient failures with backoff."""
        deadline = time.monotonic() + self.policy.deadline
        for attempt in range(self.policy.retries + 1):
            try:
                return self._follow(url, deadline)
            except FetchError as err:
                if not err.transient or attempt == self.policy.retries:
                    raise
                delay = self._delay(attempt, err.retry_after)
                if delay is None or time.monotonic() + delay >= deadline:
                    raise  # waiting that long would stall a worker: leave the image for a rerun
                logger.debug("retrying %s in %.2fs after %s", url, delay, err)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to sleep before the next attempt; None when the server asks for a long wait."""
        delay = self.policy.backoff * 2 ** attempt
        if retry_after is not None:
            if retry_after > self.policy.max_retry_after:
                return None
            delay = max(delay, retry_after)
        return min(delay, _MAX_DELAY)

    def _follow(self, url: str, deadline: float) -> bytes:
        for _hop in range(self.policy.max_redirects + 1):
            host = check_url(url)
            if self.policy.guard.literal_refused(host):
                raise FetchError(REFUSED_REASON)  # every hop: a redirect to a private literal too
            with self._host_slot(host):
                location = self._get(url, deadline)
            if isinstance(location, bytes):
                return location
            url = urljoin(url, location)
        raise FetchError("too many redirects", f"more than {self.policy.max_redirects} redirects")

    def _get(self, url: str, deadline: float) -> bytes | str:
        """One request: the body, or the Location to follow next."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timeout", f"deadline of {self.policy.deadline:g}s exceeded", transient=True)
        timeout = min(self.policy.timeout, remaining)
        try:
            resp = self._session().get(url, stream=True, allow_redirects=False, timeout=(timeout, timeout))
        except requests.RequestException as exc:
            raise _request_error(exc) from None
        with resp:
            if resp.is_redirect:
                return resp.headers["location"]
            _check_headers(resp, self.policy.max_bytes)
            return _read_body(resp, self.policy.max_bytes, deadline, self.policy.deadline)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # an environment proxy would connect for us, past the guard
            adapter = GuardedAdapter(self.policy.guard)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = self.policy.user_agent
            session.headers["Accept"] = "image/*,*/*;q=0.5"
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    @contextmanager
    def _host_slot(self, host: str) -> Iterator[None]:
        with self._lock:
            slot = self._hosts.setdefault(host, threading.BoundedSemaphore(self.policy.per_host))
        with slot:
            yield


def _check_headers(resp: requests.Response, max_bytes: int) -> None:
    status = resp.status_code
    if not 200 <= status < 300:
        transient = status in _RETRY_STATUS or status >= 500
        retry_after = _retry_after(resp.headers.get("retry-after")) if transient else None
        raise FetchError(f"http {status}", resp.reason or "", transient=transient, retry_after=retry_after)
    raw_type = resp.headers.get("content-type", "")
    mime = raw_type.split(";")[0].strip().lower()
    # absent or octet-stream is allowed: the decoder has the final word on what is an image
    if mime and not mime.startswith("image/") and mime not in _OCTET_STREAM:
        raise FetchError(f"not an image ({mime[:40]})", f"content-type {raw_type[:100]!r}")
    length = resp.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise FetchError("too large", f"content-length {length} > {max_bytes} bytes")


def _read_body(resp: requests.Response, max_bytes: int, deadline: float, budget: float) -> bytes:
    """Stream the body. read1 returns whatever arrived, so a slow drip still reaches the deadline check."""
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := resp.raw.read1(_CHUNK, decode_content=True):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError("too large", f"body exceeds {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchError("timeout", f"deadline of {budget:g}s exceeded after {size} bytes",
                                 transient=True)
            chunks.append(chunk)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise FetchError("timeout", str(exc)[:200], transient=True) from None
    except urllib3.exceptions.DecodeError as exc:
        raise FetchError("bad encoding", str(exc)[:200]) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise FetchError("connection error", f"{type(exc).__name__}: {str(exc)[:200]}", transient=True) from None
    return b"".join(chunks)


def _request_error(exc: requests.RequestException) -> FetchError:
    detail = f"{type(exc).__name__}: {str(exc)[:200]}"
    if refused(exc):
        return FetchError(REFUSED_REASON)  # no detail: the same answer whatever listens there
    if isinstance(exc, requests.Timeout):
        return FetchError("timeout", detail, transient=True)
    if isinstance(exc, requests.exceptions.SSLError):
        return FetchError("ssl error", detail)  # a bad certificate does not heal on retry
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                        requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader)):
        return FetchError("bad url", detail)
    return FetchError("connection error", detail, transient=True)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
