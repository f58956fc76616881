"""Load a rules file: read it (once, safely), parse it, pick its format's loader, compile the model
into the rules the engine runs. The one call the adapters (the addon, the CLI) make.

The pipeline: ``load.rulesfile`` (bytes) → ``load.yamlpos`` (positioned nodes) → a loader from
``load.FORMATS`` (the model, route by route) → ``compile.compiler`` (compiled routes) → :class:`Rules`.
"""
from __future__ import annotations

import gc
import threading

from . import model
from .compile.compiler import compile_rules
from .compile.runtime import Rules
from .errors import RulesError
from .load import FORMATS
from .load.ctx import CompileCtx, kind
from .load.rulesfile import read_rules_file
from .load.yamlpos import Docs, parse_bytes, parse_text
from .node import Y

__all__ = ["Rules", "load_model", "load_rules", "load_rules_bytes", "load_rules_text"]


def _loader(root: Y, cc: CompileCtx):
    for fmt in FORMATS:
        if fmt.claims(root):
            return fmt(root, cc)
    if isinstance(root, Docs):
        line, col = root.starts[1]
        cc.error_at(line, col, "a rules file holds one YAML document; a second one starts here "
                               "(several documents are read only as Kubernetes HTTPRoute or VirtualService manifests)")
    else:
        cc.error(root, f"the rules file must be a mapping with `version` and `routes`, not {kind(root.v)}")
    cc.raise_if_errors()
    raise AssertionError("unreachable")


def compile_tree(root: Y, cc: CompileCtx) -> Rules:
    """Compile a parsed file, route by route as its loader reads them."""
    try:
        loader = _loader(root, cc)
        settings = loader.head()
        rules = compile_rules(cc.file, loader.format, cc.upstreams, settings, loader.routes(), cc)
    except RulesError as e:
        e.imported = tuple(cc.imported)     # a fix in an imported file must reload too
        raise
    object.__setattr__(rules, "imports", tuple(cc.imported))
    return rules


def load_model(root: Y, cc: CompileCtx) -> model.Rules:
    """The model of a parsed file, whole (for exporters and tools that read rules without running
    them). Raises :class:`RulesError` for structural problems; conditions are not compiled."""
    loader = _loader(root, cc)
    settings = loader.head()
    routes = tuple(loader.routes())
    cc.raise_if_errors()
    return model.Rules(file=cc.file, upstreams=dict(cc.upstreams), settings=settings, routes=routes,
                       source_format=loader.format, warnings=tuple(cc.warnings))


class _no_gc:
    """Loading allocates hundreds of thousands of small objects and frees none of them until the
    end: the cyclic GC would rescan them over and over (measured: 40% of a 10,000-route load).
    gc.disable() is process-wide and a hot reload loads in a worker thread, possibly while another
    load runs: the first load in disables the GC, the last one out restores it."""
    _lock = threading.Lock()
    _depth = 0
    _was = False

    def __enter__(self):
        with _no_gc._lock:
            if _no_gc._depth == 0:
                _no_gc._was = gc.isenabled()
                gc.disable()
            _no_gc._depth += 1

    def __exit__(self, *exc):
        with _no_gc._lock:
            _no_gc._depth -= 1
            if _no_gc._depth == 0:
                if not gc.get_freeze_count():   # (unless someone else froze objects on purpose)
                    # All that the load allocated is in the youngest generation, and the next
                    # young collections would traverse it all with traffic waiting (~0.5 s for a
                    # 5 MB file). freeze() + unfreeze() moves every object to the oldest generation
                    # in O(1), without a traversal; garbage there goes at the next full collection.
                    gc.freeze()
                    gc.unfreeze()
                if _no_gc._was:
                    gc.enable()


def load_rules(path: str) -> Rules:
    """Load and compile a rules file. Raises :class:`RulesError` with located problems."""
    return load_rules_bytes(read_rules_file(path).data, path)


def load_rules_bytes(raw: bytes, path: str) -> Rules:
    """Compile the bytes of a rules file read once (by rulesfile.read_rules_file)."""
    try:
        with _no_gc():
            root, text = parse_bytes(raw, path)
            try:
                return compile_tree(root, CompileCtx(path, text))
            finally:
                _dismantle(root)
    except RecursionError:
        raise RulesError.at(path, 1, 1, "the file is nested too deeply") from None


def _dismantle(root: Y) -> None:
    """Free a parsed tree one list item at a time (routes, endpoints). Freed at once, a 5 MB file's
    tree is one C-level cascade holding the GIL for ~0.2 s: in a hot reload's worker thread, the
    event loop would wait for it; item by item, it gets the GIL back in between."""
    if isinstance(root.v, dict):
        for node in root.v.values():
            if isinstance(node.v, list):
                while node.v:
                    node.v.pop()


def load_rules_text(text: str, file: str = "<rules>") -> Rules:
    try:
        with _no_gc():
            return compile_tree(parse_text(text, file), CompileCtx(file, text))
    except RecursionError:
        raise RulesError.at(file, 1, 1, "the file is nested too deeply") from None
