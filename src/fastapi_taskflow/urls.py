"""Showing connection URLs without their secrets (logs, errors, the CLI, ``describe()``)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit


def mask_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` query) replaced by ``***``."""
    text = str(url)
    parts = urlsplit(text)
    # Each part is replaced in place: urlunsplit would turn ``unix:///path`` into ``unix:/path``.
    if parts.password is not None:
        # Split by hand: ``parts.hostname`` lower-cases the host and drops IPv6 brackets.
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        text = text.replace(parts.netloc, f"{user}:***@{hostport}", 1)
    if "password" in parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
        text = text.replace(f"?{parts.query}", f"?{query}", 1)
    return text
