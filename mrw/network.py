"""The network under every request: name resolution, the address policy, the watchdog.

`Fetcher` mounts `GuardedAdapter` on its sessions and runs each request inside an `Exchange`;
tests hand in their own `Network` to control what a host name resolves to.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from typing import TYPE_CHECKING

import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

if TYPE_CHECKING:  # what the mixins are mixed into, for the type checker
    _Connection = HTTPConnection
    _Pool = HTTPConnectionPool
else:
    _Connection = _Pool = object


class BlockedAddress(Exception):
    """A connection the address policy refuses (not an OSError, so urllib3 does not retry it)."""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`text` as an IP address (an IPv6 zone like `%eth0` dropped), or None if it is not one."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def is_internal(ip: str) -> bool:
    """Loopback, private, link-local, shared (CGNAT), reserved or multicast: not on the internet."""
    addr = _ip(ip)
    if addr is None:
        return True  # not an address we can place: treat it as the more dangerous kind
    mapped = getattr(addr, "ipv4_mapped", None)
    return not (mapped or addr).is_global


class Network:
    """How a host name becomes addresses and how a socket connects; tests swap in their own."""

    def resolve(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """(family, socket address) pairs for `host`, in the order to try them."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, address) for family, _, _, _, address in infos]

    def connect(self, sock: socket.socket, address: tuple) -> None:
        sock.connect(address)


class Exchange:
    """One request with all its redirects: its sockets, its deadline and what it may reach.

    The watchdog shuts every socket of the exchange down at the deadline, whatever it is doing
    (connecting, reading headers a byte at a time, reading the body), so `timeout` bounds the
    whole exchange. The first connection tells whether the URL itself is on an internal address;
    unless it is, no later hop may connect to one.
    """

    def __init__(self, network: Network, deadline: float):
        self.network, self.deadline = network, deadline
        self.fired = threading.Event()
        self.allow_internal: bool | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self.cut)
        self._timer.daemon = True

    def __enter__(self) -> Exchange:
        _LOCAL.exchange = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _LOCAL.exchange = None

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            fired = self.fired.is_set()
        if fired:
            _shutdown(sock)

    def cut(self) -> None:
        with self._lock:
            self.fired.set()
            socks = list(self._socks)
        for sock in socks:
            _shutdown(sock)

    def admit(self, host: str, ips: list[str]) -> None:
        internal = [ip for ip in ips if is_internal(ip)]
        if self.allow_internal is None:  # the URL's own host
            self.allow_internal = bool(internal)
        elif internal and not self.allow_internal:
            raise BlockedAddress(
                f"a redirect to {host} ({internal[0]}), a private, loopback or link-local "
                "address, from a URL on a public one"
            )


_LOCAL = threading.local()


def _current_exchange() -> Exchange | None:
    return getattr(_LOCAL, "exchange", None)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _resolve_before(ex: Exchange, host: str, port: int) -> list[tuple[int, tuple]]:
    """`ex.network.resolve(host, port)`, given up at the exchange's deadline.

    A lookup cannot be interrupted, and a slow or silent DNS server holds it for the resolver's
    own timeouts (5 s a try by default, several tries), so it runs in a thread of its own that
    the request stops waiting for at the deadline; the thread ends when the resolver gives up.
    An address needs no lookup and is resolved here at once."""
    if _ip(host) is not None:
        return ex.network.resolve(host, port)
    outcome: list = []
    done = threading.Event()

    def look_up() -> None:
        try:
            outcome.append((True, ex.network.resolve(host, port)))
        except BaseException as e:  # handed to the request's thread below
            outcome.append((False, e))
        finally:
            done.set()

    threading.Thread(target=look_up, name="mrw-resolve", daemon=True).start()
    if not done.wait(max(0.0, ex.deadline - time.monotonic())):
        ex.fired.set()  # the exchange's time is up: the fetch reports a timeout
        raise TimeoutError(f"the name lookup of {host} did not finish within the time limit")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


class _GuardedConnectionMixin(_Connection):
    """Resolves, checks and connects through the current exchange, so the policy decides on the
    address that is then connected to, and the watchdog holds the socket from its creation."""

    def _new_conn(self) -> socket.socket:
        ex = _current_exchange()
        if ex is None:
            return super()._new_conn()
        try:
            addresses = _resolve_before(ex, self._dns_host, self.port)
        except socket.gaierror as e:
            raise urllib3.exceptions.NameResolutionError(self.host, self, e) from e
        except TimeoutError as e:
            raise urllib3.exceptions.ConnectTimeoutError(self, str(e)) from e
        ex.admit(self.host, [address[0] for _, address in addresses])
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        error: OSError | None = None
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            ex.register(sock)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                ex.network.connect(sock, address)
                self.admitted_ip = address[0]  # what a reuse of this connection is judged by
                return sock
            except TimeoutError as e:
                sock.close()
                raise urllib3.exceptions.ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={timeout})"
                ) from e
            except OSError as e:
                sock.close()
                error = e
        raise urllib3.exceptions.NewConnectionError(
            self, f"Failed to establish a new connection: {error or 'no address'}"
        )


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedPoolMixin(_Pool):
    """A kept-alive connection is checked against the policy (and watched) like a new one."""

    def _get_conn(self, timeout: float | None = None):
        conn = super()._get_conn(timeout)
        ex = _current_exchange()
        sock = getattr(conn, "sock", None)
        if ex is not None and sock is not None:
            ip = getattr(conn, "admitted_ip", None)
            if ip is None:
                try:
                    ip = sock.getpeername()[0]
                except OSError:
                    return conn  # dropped: urllib3 reconnects it through _new_conn
            try:
                ex.admit(self.host, [ip])
            except BlockedAddress:
                conn.close()  # urllib3 puts a fresh slot back in the pool for it
                raise
            ex.register(sock)
        return conn


class _GuardedHTTPPool(_GuardedPoolMixin, HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(_GuardedPoolMixin, HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPPool,
            "https": _GuardedHTTPSPool,
        }
