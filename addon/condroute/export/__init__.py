"""Exporters: the model (``condroute.model``) written as another gateway's configuration.

One module per target (Envoy, nginx, HAProxy next). An exporter reads a ``model.Rules`` (from
``condroute.rules.load_model``) and writes text; what the target cannot express is said, located
in the rules file, never dropped silently. Nothing here imports mitmproxy or the engine."""
