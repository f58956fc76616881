"""Kubernetes manifests: a YAML stream of HTTPRoute and VirtualService documents.

One loader claims any file whose documents carry ``apiVersion`` and ``kind``; it checks each
document, expands ``kind: List`` (what ``kubectl get -o yaml`` prints), and hands the documents of
each kind to their importer (``load.httproute``, ``load.istio``), in the order each kind first
appears. Documents of other kinds (Gateway, Service, DestinationRule...) are named in one warning:
they describe the cluster, not routing condroute can do. The file has no settings of its own: when
it is imported, the importing file's apply; given directly as ``condroute_rules``, the defaults."""
from __future__ import annotations

from collections import Counter
from typing import Iterator

from ..model import Route, Settings
from ..node import Y
from .ctx import CompileCtx, kind
from .httproute import httproute_routes
from .istio import virtualservice_routes
from .yamlpos import Docs

# (API group, kind) → (the versions read, importer)
IMPORTERS = {
    ("gateway.networking.k8s.io", "HTTPRoute"): (("v1", "v1beta1"), httproute_routes),
    ("networking.istio.io", "VirtualService"): (("v1", "v1beta1", "v1alpha3"), virtualservice_routes),
}


def _documents(root: Y) -> list[Y]:
    return list(root.v) if isinstance(root, Docs) else [root]


def _is_manifest(d: Y) -> bool:
    return isinstance(d.v, dict) and "apiVersion" in d.v and "kind" in d.v


class KubeLoader:
    format = "kubernetes"

    @staticmethod
    def claims(root: Y) -> bool:
        return any(_is_manifest(d) for d in _documents(root))

    def __init__(self, root: Y, cc: CompileCtx):
        self.root, self.cc = root, cc
        self.groups: dict[tuple[str, str], list[Y]] = {}

    def head(self) -> Settings:
        cc = self.cc
        others: Counter[str] = Counter()
        for i, d in enumerate(_documents(self.root)):
            self._document(d, i + 1, others)
        if others:
            listed = ", ".join(f"{n} {k}" if n > 1 else k for k, n in sorted(others.items()))
            cc.warn(self.root, f"not read: {listed} (condroute reads HTTPRoute and VirtualService documents; "
                               f"map services to addresses in the importing file's upstreams)")
        if not self.groups and not cc.problems:
            cc.error(self.root, "no HTTPRoute or VirtualService in this file: nothing to route")
        cc.raise_if_errors()
        return Settings()

    def _document(self, d: Y, n: int, others: Counter, in_list: bool = False) -> None:
        cc = self.cc
        what = "an item of the List" if in_list else f"document {n}"
        if not _is_manifest(d):
            cc.error(d, f"{what} is not a Kubernetes object: expected a mapping with apiVersion and kind, "
                        f"not {kind(d.v) if not isinstance(d.v, dict) else 'a mapping without them'}")
            return
        api, kd = d.v["apiVersion"], d.v["kind"]
        api_s, kind_s = api.text or "", kd.text or ""
        if kind_s == "List" or (kind_s.endswith("List") and "items" in d.v):
            items = d.v.get("items")
            if items is None or not isinstance(items.v, list):
                cc.error(items or kd, "a List needs `items`, a list of objects")
                return
            for it in items.v:
                self._document(it, n, others, in_list=True)
            return
        group, _, version = api_s.rpartition("/")
        entry = IMPORTERS.get((group, kind_s))
        if entry is None:
            others[kind_s or "?"] += 1
            return
        versions, _ = entry
        if version not in versions:
            cc.error(api, f"{kind_s} {api_s} is not read: condroute reads {group}/"
                          f"{', '.join(versions)}")
            return
        self.groups.setdefault((group, kind_s), []).append(d)

    def routes(self) -> Iterator[Route]:
        for key, docs in self.groups.items():
            yield from IMPORTERS[key][1](docs, self.cc)
