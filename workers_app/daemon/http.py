"""A ``requests.Session`` for one server that reads the environment once, not on every request."""

from __future__ import annotations

import os

import requests
from requests.utils import get_environ_proxies, get_netrc_auth


def environment_session(base_url: str, *, netrc: bool = True) -> requests.Session:
    """A keep-alive session with the proxy, CA-bundle and (``netrc``) ~/.netrc settings for ``base_url``
    resolved now. A default session re-reads os.environ, the proxy rules and ~/.netrc on each call, CPU
    spent on every request; the daemon's settings do not change while it runs."""
    session = requests.Session()
    session.trust_env = False
    session.proxies.update(get_environ_proxies(base_url))  # honours NO_PROXY for this host
    if base_url.startswith("https:"):
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
    if netrc and (auth := get_netrc_auth(base_url)):
        session.auth = auth
    return session
