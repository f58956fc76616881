"""What a target is: how an exporter writes its configuration, and how ``--verify`` runs it.

Each target module (``envoy``, ``nginx``, ``haproxy``, ``httproute``, ``krakend``) defines
``TARGET``, an instance of a :class:`Target` subclass; ``targets.TARGETS`` lists them.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

from .. import model
from .ir import NotExported


@dataclass
class ExportOptions:
    """How to write the configuration.

    ``addresses``: for ``--verify``: an upstream's origin (``model.Upstream.origin``, e.g.
    ``http://127.0.0.1:9001``) -> ``(host, port)`` to connect to instead, over plain HTTP (a
    recording backend stands in for it). Everything else is written as for production: the Host
    sent upstream is still the *original* upstream's authority, paths and headers unchanged.

    ``client_ip_header``: for ``--verify`` only: the gateway takes the client's address from this
    request header instead of the connection (the verifier can only connect from loopback). With
    it, ``settings.trusted_proxies`` still applies on top: the header's address is the peer.

    ``workdir``: the folder the configuration and its ``files`` are written to and run from;
    exporters may name it in the configuration (an njs script, a JWKS file, a pid file)."""
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    addresses: dict[str, tuple[str, int]] | None = None
    client_ip_header: str | None = None
    workdir: str = "."
    admin_port: int | None = None     # Envoy's admin listener, when wanted (verify: a free port)


@dataclass
class Exported:
    text: str                                               # the main configuration
    files: dict[str, str] = field(default_factory=dict)     # other files, by name relative to workdir
    refused: list[NotExported] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)          # said on stderr, not errors


class Target:
    name: str = ""
    config_name: str = ""          # the main file's name in workdir: envoy.yaml, nginx.conf, ...
    document: bool = False         # httproute, krakend: a document, no binary to run

    def export(self, rules: model.Rules, opts: ExportOptions) -> Exported:
        raise NotImplementedError

    # ------------------------------------------------------------------ running (not for documents)
    def binary(self) -> tuple[str | None, str]:
        """The gateway's executable, or (None, why it is missing and how to install it)."""
        raise NotImplementedError

    def check(self, workdir: str) -> str | None:
        """Check the written configuration with the gateway's own checker (``envoy --mode
        validate``, ``nginx -t``, ``haproxy -c``): None when it is good, else its message."""
        raise NotImplementedError

    def start(self, workdir: str, opts: ExportOptions) -> subprocess.Popen:
        """Start the gateway in the foreground on ``opts.listen_port`` (the caller waits until the
        port answers and stops it)."""
        raise NotImplementedError
