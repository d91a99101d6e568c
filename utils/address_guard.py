"""Server-side request forgery guard: which addresses a server-side fetch may connect to, and a requests
adapter that checks every address after DNS resolution and connects to exactly the address it checked."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from urllib3.util import connection as _u3conn

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
