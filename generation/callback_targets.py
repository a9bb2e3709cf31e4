"""Where a task's callback may go: no server-side request into the farm's own network unless allowed.

A user names the callback URL, so without a check anyone who may submit could make the scheduler POST to
127.0.0.1, the LAN or a cloud metadata address (169.254.169.254). Loopback, private, link-local, multicast,
reserved and unspecified addresses are refused, unless they lie in T2I_WEBHOOK_ALLOW_NETWORKS (CIDRs, for
receivers on the LAN). The URL is checked at submit (an address written in it, a user name or password) and
again at every send on the addresses its host resolves to then; the request then goes to the address that was
checked, so a DNS answer that changes between the check and the connection cannot move it.
"""

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """The callback URL or an address it resolves to may not be called; the message says why, for people."""


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in settings.T2I["WEBHOOK_ALLOW_NETWORKS"]]


def address_refusal(address: Address) -> str | None:
    """Why the scheduler must not call this address, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed_networks()):
        return None
    kinds = {
        "loopback": address.is_loopback,
        "link-local": address.is_link_local,
        "multicast": address.is_multicast,
        "unspecified": address.is_unspecified,
        "private": address.is_private,
        "reserved": address.is_reserved,
    }
    kind = next((name for name, matches in kinds.items() if matches), None)
    if kind is None:
        return None
    return f"{address} is a {kind} address (T2I_WEBHOOK_ALLOW_NETWORKS allows LAN receivers)."


def parts(url: str) -> SplitResult:
    """The URL's parts, refused when it carries a user name or password or has no host."""
    split = urlsplit(url)
    if split.username is not None or split.password is not None:
        raise Refused("A callback URL must not carry a user name or password.")
    if not split.hostname:
        raise Refused("A callback URL needs a host.")
    return split


def check_url(url: str) -> None:
    """At submit: a URL the scheduler may call as far as can be told without resolving its host."""
    host = parts(url).hostname
    if host == "localhost" or host.endswith(".localhost"):
        raise Refused("localhost is the scheduler itself.")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked on what it resolves to, at every send
    refusal = address_refusal(address)
    if refusal:
        raise Refused(refusal)


def resolve(url: str) -> str:
    """At send: the address to connect to, after checking every address the URL's host resolves to now.
    Refused when one may not be called; OSError when the name does not resolve (a later try may)."""
    split = parts(url)
    port = split.port or (443 if split.scheme == "https" else 80)
    infos = socket.getaddrinfo(split.hostname, port, type=socket.SOCK_STREAM)  # OSError: try again later
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        refusal = address_refusal(address)
        if refusal:
            raise Refused(f"{split.hostname} resolves to {refusal}")
    return str(addresses[0])
