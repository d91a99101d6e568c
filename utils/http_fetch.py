"""The one guarded fetcher: bounded, polite HTTP fetching of image bytes (per-host limits, retries, manual
redirects, size caps) behind the server-side request forgery guard: which addresses a fetch may connect to,
and a requests adapter that checks every address after DNS resolution and connects to exactly the address it
checked (no fetch reaches loopback, private or link-local addresses unless allowed)."""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from urllib3.util import connection as _u3conn

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSED_REASON = "address not allowed"


class AddressNotAllowed(urllib3.exceptions.NewConnectionError):
    """Raised before any connection when the destination address is not allowed."""


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address hidden in an IPv6 one (IPv4-mapped, 6to4, Teredo), else ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address; loopback, private, link-local, multicast,
    reserved, unspecified, shared (CGNAT) and site-local are not, in IPv4 and IPv6 alike."""
    for candidate in {ip, _unwrap(ip)}:
        if (candidate.is_loopback or candidate.is_private or candidate.is_link_local or candidate.is_multicast
                or candidate.is_reserved or candidate.is_unspecified or not candidate.is_global):
            return False
        if isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local:
            return False
    return True


def parse_allowlist(text: str) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """``"images.local, 10.1.0.0/16"`` -> (host names, networks). Entries are comma or space separated."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower().rstrip("."))
    return frozenset(hosts), tuple(networks)


@dataclass(frozen=True)
class AddressGuard:
    """Who may be fetched: public addresses, plus allowlisted hosts and networks; everything when
    ``allow_private`` (local development, the test suite)."""

    allow_private: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_text(cls, allow_private: bool, allowlist: str = "") -> AddressGuard:
        hosts, networks = parse_allowlist(allowlist)
        return cls(allow_private=allow_private, allowed_hosts=hosts, allowed_networks=networks)

    def allows(self, host: str, ip: IPAddress) -> bool:
        if self.allow_private or host.lower().rstrip(".") in self.allowed_hosts:
            return True
        if any(ip in net or _unwrap(ip) in net for net in self.allowed_networks):
            return True
        return is_public(ip)

    def literal_refused(self, host: str) -> bool:
        """True when ``host`` is an IP literal that will be refused (checked before any request)."""
        try:
            ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            return False
        return not self.allows(host, ip)

    def resolve(self, host: str, port: int) -> list[tuple[int, IPAddress]]:
        """Every address ``host`` resolves to, all checked; raises AddressNotAllowed if any is refused
        (a name that also points inside the network is not trusted for its public addresses)."""
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        found: list[tuple[int, IPAddress]] = []
        for family, _type, _proto, _name, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if not self.allows(host, ip):
                raise AddressNotAllowed(None, REFUSED_REASON)  # type: ignore[arg-type]
            found.append((family, ip))
        return found


def _connect_checked(conn: Any, guard: AddressGuard) -> socket.socket:
    """Resolve, check, then connect to one of the checked addresses (never resolving again)."""
    try:
        addresses = guard.resolve(conn._dns_host, conn.port)
    except socket.gaierror as exc:
        raise urllib3.exceptions.NameResolutionError(conn.host, conn, exc) from exc
    last: OSError | None = None
    for _family, ip in addresses:
        try:
            return _u3conn.create_connection((str(ip), conn.port), conn.timeout,
                                             source_address=conn.source_address,
                                             socket_options=conn.socket_options)
        except TimeoutError as exc:
            raise urllib3.exceptions.ConnectTimeoutError(
                conn, f"connection to {conn.host} timed out (timeout={conn.timeout})") from exc
        except OSError as exc:
            last = exc
    raise urllib3.exceptions.NewConnectionError(conn, f"failed to connect: {last}")


def _pool_classes(guard: AddressGuard) -> dict[str, type[urllib3.connectionpool.HTTPConnectionPool]]:
    """Connection pools whose connections go through ``guard`` (TLS SNI and Host stay the host name)."""

    class _Conn(urllib3.connection.HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _connect_checked(self, guard)

    class _TLSConn(urllib3.connection.HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _connect_checked(self, guard)

    class _Pool(urllib3.connectionpool.HTTPConnectionPool):
        ConnectionCls = _Conn

    class _TLSPool(urllib3.connectionpool.HTTPSConnectionPool):
        ConnectionCls = _TLSConn

    return {"http": _Pool, "https": _TLSPool}


class GuardedAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter whose every connection is checked by an AddressGuard."""

    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        self.guard = guard
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self.guard)


def refused(exc: BaseException) -> bool:
    """True when an exception from requests/urllib3 was caused by an AddressNotAllowed refusal."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AddressNotAllowed):
            return True
        stack += [current.__cause__, current.__context__, getattr(current, "reason", None)]
        stack += [a for a in current.args if isinstance(a, BaseException)]
    return False

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
