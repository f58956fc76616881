"""``imports:`` — files in other formats whose routes come after the importing file's own.

``imports: [routes/httproute.yaml, istio/reviews.yaml, krakend.json]``: each path is relative to the
importing file, read with the same safety rules as a rules file (regular file, size cap, one read),
its format detected from its content (Kubernetes HTTPRoute / VirtualService manifests, a KrakenD
configuration). Each is loaded in a child :class:`~condroute.load.ctx.CompileCtx`: its problems are
located in it, its service names resolve through the importing file's upstreams, and the importing
file's settings apply to its routes. A condroute file is not importable (its upstreams and settings
would have to merge): that is a located error."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Iterator

from ..errors import RulesError
from ..model import Route, Settings
from ..node import Y
from .ctx import CompileCtx, Importer
from .krakend import KrakendLoader
from .kube import KubeLoader
from .rulesfile import read_rules_file
from .yamlpos import parse_bytes

IMPORTABLE = (KrakendLoader, KubeLoader)


@dataclass
class Import:
    file: str                  # the path as resolved (relative to the importing file's folder)
    loader: Any

    def routes(self) -> Iterator[Route]:
        for r in self.loader.routes():
            yield r if r.file else replace(r, file=self.file)


def read_imports(node: Y | None, cc: CompileCtx, settings: Settings) -> list[Import]:
    """Read and check every file ``imports`` lists; the files are recorded in ``cc.imported`` (for
    the hot reload to watch) even when they do not load, so that fixing one reloads."""
    if node is None:
        return []
    if not cc.expect_list(node, "imports"):
        return []
    out: list[Import] = []
    seen: dict[str, int] = {}
    me = os.path.realpath(cc.file) if cc.file else None
    for item in node.v:
        path = cc.expect_str(item, "an entry of imports (a file's path)")
        if path is None:
            continue
        full = cc.resolve_path(path)
        real = os.path.realpath(full)
        if real == me:
            cc.error(item, f"imports {path}: a file cannot import itself")
            continue
        if real in seen:
            cc.error(item, f"imports {path}: already imported at line {seen[real]}")
            continue
        seen[real] = item.line
        try:
            read = read_rules_file(full)
        except RulesError as e:
            cc.imported.append((full, None))
            cc.error(item, f"imports {path}: {e.problems[0].message}")
            continue
        cc.imported.append((full, read.key))
        try:
            root, text = parse_bytes(read.data, full)
        except RulesError as e:
            cc.problems.extend(e.problems)         # located in the imported file
            continue
        child = cc.child(full, text)
        child.importer = Importer(cc.file, settings)
        fmt = next((f for f in IMPORTABLE if f.claims(root)), None)
        if fmt is None:
            what = ("a condroute rules file: its routes can go in this file, or this file's routes in it"
                    if isinstance(root.v, dict) and ("routes" in root.v or "version" in root.v)
                    else "not an HTTPRoute or VirtualService manifest, nor a KrakenD configuration")
            cc.error(item, f"imports {path}: {what}")
            continue
        loader = fmt(root, child)
        try:
            loader.head()          # checks the file's top level; its own settings do not apply
        except RulesError:
            continue               # its problems are already recorded (the lists are shared)
        out.append(Import(full, loader))
    return out
