"""Who is asking: the client's address, by one rule for the submit limit and the login lockout (django-axes
calls this through AXES_CLIENT_IP_CALLABLE).

Without T2I_TRUSTED_PROXIES the client is the peer of the connection (REMOTE_ADDR) and X-Forwarded-For is
ignored: anyone can write that header. Behind reverse proxies, each proxy appends the address it was reached
from to the header, so only the entries the trusted proxies appended are believed:
- a count N: the client is the N-th entry from the right (what the outermost proxy saw);
- networks: from the right, the first address that is not a trusted proxy's, starting with REMOTE_ADDR.
"""

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(request: HttpRequest) -> str:
    remote = request.META.get("REMOTE_ADDR") or ""
    trusted = settings.T2I["TRUSTED_PROXIES"]
    peer = parse(remote)
    if not trusted or peer is None:
        return str(peer) if peer is not None else remote
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    if isinstance(trusted, int):
        chosen = parse(hops[-trusted]) if len(hops) >= trusted else None
        return str(chosen or peer)  # fewer entries than proxies: not a request that came through them
    networks = _networks(tuple(trusted))
    for hop in reversed(hops):
        if not any(peer in network for network in networks):
            break
        earlier = parse(hop)
        if earlier is None:
            break  # a trusted proxy never writes this: the proxy's own address is the best we know
        peer = earlier
    return str(peer)


def parse(text: str) -> Address | None:
    """The IP address in `text` (an IPv4-mapped IPv6 one as IPv4), or None when it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return address


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
