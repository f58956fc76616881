"""The TLS client context of the connections condroute opens itself (mirrored copies: mirror.py;
requests it sends to retry them: retry.py), trusting what mitmproxy trusts for its own upstream
connections (net/tls.py): the CAs of ``ssl_verify_upstream_trusted_ca`` / ``_confdir``, else
certifi's; nothing verified with ``ssl_insecure``. Both speak HTTP/1.1 (ALPN ``http/1.1``).

A context is made once per option values, in a worker thread: loading a CA store takes tens of
milliseconds, which on the event loop would stall every flow.
"""
from __future__ import annotations

import asyncio
import ssl

import certifi     # mitmproxy's own CA bundle for upstreams (a dependency of mitmproxy)
from mitmproxy import ctx

_contexts: dict[tuple, ssl.SSLContext] = {}


def make_context(insecure: bool, cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """OSError or ssl.SSLError when the trusted certificates do not load."""
    if insecure:
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
    else:
        c = ssl.create_default_context(cafile=cafile or (None if capath else certifi.where()), capath=capath)
    c.set_alpn_protocols(["http/1.1"])
    return c


async def upstream_tls() -> ssl.SSLContext:
    """The context for mitmproxy's options now (OSError or ssl.SSLError as make_context)."""
    o = ctx.options
    key = (bool(getattr(o, "ssl_insecure", False)), getattr(o, "ssl_verify_upstream_trusted_ca", None),
           getattr(o, "ssl_verify_upstream_trusted_confdir", None))
    c = _contexts.get(key)
    if c is None:
        c = _contexts[key] = await asyncio.get_running_loop().run_in_executor(None, make_context, *key)
    return c
