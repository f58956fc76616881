"""Loaders: a file's parsed nodes → the model (``condroute.model``), one per format.

``FORMATS`` is tried in order; the first whose ``claims(root)`` is true reads the file. A loader
has ``format`` (its name), ``head()`` (checks the top level, fills ``cc.upstreams``, returns the
model's Settings) and ``routes()`` (yields model Routes in file order). A new importer is a module
here and a line in ``FORMATS``."""
from __future__ import annotations

from .condroute import CondrouteLoader
from .krakend import KrakendLoader
from .kube import KubeLoader

FORMATS = (KrakendLoader, KubeLoader, CondrouteLoader)
