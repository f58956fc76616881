"""The JSON Schema (draft 2020-12) of a condroute rules file, for editors' YAML language servers.

The loader (load/condroute.py) and the condition kinds (conditions/, each with its own schema)
are the authority: the schema only helps an editor complete keys and flag typos early. Its key sets are kept equal to the loader's key lists (BACKEND_KEYS etc.); a test
checks that. KrakenD configuration files (top-level ``endpoints``) are not described here.
"""
from __future__ import annotations

import json
from typing import Any

from ..conditions.registry import KINDS
from ..httptext import TOKEN_PATTERN
from ..model import RETRY_ON

SCHEMA_ID = "urn:condroute:rules:v1"

# Text stays text: condroute reads these as the text written, so `NO`, `yes`, `0777` or `2026-12-01`
# (a boolean, a number or a date to a YAML 1.1 reader) are the strings "NO", "yes", "0777", "2026-12-01"
_TEXT = ("compared as the text written: NO, yes, on, 0777, 1_000, 2026-12-01, ~ are those strings, "
         "never a boolean, a number or null")
_scalar = {"type": ["string", "number", "boolean"], "description": _TEXT}
_name = {"type": ["string", "number", "boolean"], "description": "a non-empty name, " + _TEXT}
_header_name = {"type": "string", "pattern": TOKEN_PATTERN}
# a header value: visible text and tabs, no other control character (RFC 9110 §5.5)
_header_value = {"type": ["string", "number", "boolean"], "pattern": "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]*$",
                 "description": "a header value, " + _TEXT}

_pct = {"type": "number", "minimum": 0, "maximum": 100, "description": "percent of requests (default 100)"}
_duration = {"oneOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                       {"type": "string", "pattern": "^(?!\\s*0+(\\.0+)?\\s*(ms|s|m)?\\s*$)\\s*\\d+(\\.\\d+)?\\s*(ms|s|m)?\\s*$"}],
             "description": "seconds, or 2s, 500ms, 1m"}
_status = {"type": "integer", "minimum": 200, "maximum": 599}
_mirror = {"oneOf": [{"type": "string", "minLength": 1, "description": "an upstream name or URL (percent 100)"},
                     {"type": "object", "required": ["upstream"], "additionalProperties": False,
                      "description": "a copy of the request is sent there too; its response is discarded",
                      "properties": {"upstream": {"type": "string", "minLength": 1}, "percent": _pct}}]}
# load/toolbox.py parse_sni: preserve, or a DNS name that is not an IP address (all digits and dots)
_SNI = ("^(preserve|(?![0-9.]+$)(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
        "(\\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\\.?)$")
_RETRY_ON_LIST = "^\\s*(%s)\\s*(,\\s*(%s)\\s*)*$" % ("|".join(RETRY_ON), "|".join(RETRY_ON))


def build_schema() -> dict[str, Any]:
    matcher_object = {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "equals": _scalar,
            "in": {"type": "array", "items": _scalar, "minItems": 1},
            "prefix": _scalar,
            "suffix": _scalar,
            "contains": _scalar,
            "regex": {"type": "string", "description": "unanchored search; use ^...$ to anchor"},
            "present": {"type": "boolean"},
            "not": {"$ref": "#/$defs/matcher"},
            "ignore_case": {"type": "boolean", "description": "beside a string form: compare case-insensitively"},
            "gt": {"type": "number"}, "ge": {"type": "number"}, "lt": {"type": "number"}, "le": {"type": "number"},
        },
    }
    # one entry per condition kind, from the kinds' own registrations
    condition_props = {k.name: k.schema for k in KINDS.values()}
    host_list = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                 "description": 'exact host, "*.example.com", or a list of those'}
    method_list = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    match_props: dict[str, Any] = {
        "host": host_list,
        "methods": method_list,
        "method": method_list,
        "path": {"description": "/checkout/{id}, /api/* (prefix), or a matcher mapping such as {regex: ...}",
                 "oneOf": [{"type": "string", "pattern": "^/"}, {"$ref": "#/$defs/matcher_object"}]},
    }
    # route-level conditions (extension): every condition key except the ones match already has
    match_props.update({k: {"$ref": f"#/$defs/condition/properties/{k}"}
                        for k in condition_props if k not in match_props})
    backend = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": _name,
            "when": {"$ref": "#/$defs/condition"},
            "fallback": {"type": "boolean", "description": "selected only when no other backend of the route holds"},
            "upstream": {"type": "string", "description": "a name from upstreams, or scheme://host[:port][/base]"},
            "split": {
                "type": "object", "required": ["by", "weights"], "additionalProperties": False,
                "description": "a sticky weighted choice among upstreams",
                "properties": {
                    "by": {"type": "string",
                           "pattern": "^((cookie|header|query|jwt):.+|client_ip)$",
                           "description": "cookie:NAME, header:NAME, query:NAME, jwt:CLAIM or client_ip"},
                    "weights": {"type": "object", "minProperties": 1,
                                "additionalProperties": {"type": "number", "minimum": 0}},
                    "salt": _scalar,
                },
            },
            "path": {"type": "string", "description": "forwarded path: {param}, {path}, {rest}"},
            "set_headers": {"type": "object", "propertyNames": _header_name, "additionalProperties": _header_value,
                            "description": "request headers set towards the upstream; not Host (see preserve_host), "
                                           "Content-Length, Transfer-Encoding or hop-by-hop headers"},
            "remove_headers": {"oneOf": [_header_name, {"type": "array", "items": _header_name}]},
            "preserve_host": {"type": "boolean"},
            "respond": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "status": {"type": "integer", "minimum": 200, "maximum": 599,
                               "description": "a final status: 1xx responses are interim"},
                    "body": {"type": ["string", "number", "boolean", "null"]},
                    "headers": {"type": "object", "propertyNames": _header_name, "additionalProperties": _header_value,
                                "description": "no Transfer-Encoding; Content-Length is set from the body"},
                    "file": {"type": "string", "minLength": 1,
                             "description": "Map Local: the body is this file (relative to the rules file, never "
                                            "outside its folder), its content type guessed from the name; "
                                            "re-read when it changes"},
                    "dir": {"type": "string", "minLength": 1,
                            "description": "answers with the file {rest} names inside this folder (404 when "
                                           "missing; nothing outside it); the route's path must end in /*"},
                },
                "not": {"anyOf": [{"required": ["file", "dir"]}, {"required": ["file", "body"]},
                                  {"required": ["dir", "body"]}]},
                # 204 and 304 responses cannot have content (RFC 9110)
                "if": {"properties": {"status": {"enum": [204, 304]}}, "required": ["status"]},
                "then": {"properties": {"body": {"enum": ["", None]}}},
            },
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
            "retries": {"type": "integer", "minimum": 0, "maximum": 10},
            "retry_on": {"description": "what retries cover (default connect-failure); idempotent methods only, "
                                        "before anything reached the client; then the fallback",
                         "oneOf": [{"type": "array", "minItems": 1, "items": {"enum": list(RETRY_ON)}},
                                   {"type": "string", "pattern": _RETRY_ON_LIST}]},
            "enabled": {"type": "boolean", "description": "false: skipped (condroute.enable switches it on while "
                                                          "the proxy runs)"},
            "failover": {"type": "boolean", "description": "false: when its upstream is unavailable, answer "
                                                           "502/503 with the reason instead of failing over"},
            "mirror": {"oneOf": [_mirror, {"type": "array", "minItems": 1, "items": _mirror}]},
            "fault": {
                "type": "object", "additionalProperties": False, "minProperties": 1,
                "anyOf": [{"required": ["delay"]}, {"required": ["abort"]}],
                "description": "Istio's fault injection, before the upstream is asked",
                "properties": {
                    "delay": {"oneOf": [_duration, {"type": "object", "required": ["seconds"],
                                                    "additionalProperties": False,
                                                    "properties": {"seconds": _duration, "percent": _pct}}]},
                    "abort": {"oneOf": [_status, {"type": "object", "required": ["status"],
                                                  "additionalProperties": False,
                                                  "properties": {"status": _status, "percent": _pct}}]},
                    "percent": _pct,
                },
            },
            "sni": {"type": "string", "minLength": 1, "pattern": _SNI,
                    "description": "the TLS server name towards an https upstream: a host name, or preserve "
                                   "(the client's)"},
            "throttle": {"type": "object", "required": ["kbps"], "additionalProperties": False,
                         "description": "the response is streamed to the client at this rate",
                         "properties": {"kbps": {"type": "number", "exclusiveMinimum": 0, "maximum": 10_000_000,
                                                 "description": "kilobits per second (1 kbps = 125 bytes/s)"}}},
        },
        "allOf": [
            {"not": {"required": ["upstream", "split"]}},
            {"not": {"required": ["upstream", "respond"]}},
            {"not": {"required": ["split", "respond"]}},
            {"if": {"properties": {"fallback": {"const": True}}, "required": ["fallback"]},
             "then": {"not": {"required": ["when"]}}},
        ],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "condroute rules file, version 1",
        "description": "Conditional routing rules for the condroute mitmproxy addon. "
                       "`condroute validate FILE` is the authority; this schema helps editors.",
        "type": "object",
        "anyOf": [{"required": ["routes"]}, {"required": ["imports"]}],
        "additionalProperties": False,
        "properties": {
            "version": {"const": 1},
            "upstreams": {"type": "object", "description": "named destinations: NAME: scheme://host[:port][/base]; "
                                                           "a NAME may be a cluster service (reviews, reviews/v2, web:8080)",
                          "propertyNames": {"pattern": "^(?!.*://).+$"},
                          "additionalProperties": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9+.-]*://"}},
            "settings": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "on_no_match": {"enum": ["passthrough", "error"]},
                    "trusted_proxies": KINDS["client_ip"].schema,
                    "jwt": {"type": "object", "required": ["verify"], "additionalProperties": False,
                            "description": "from: header:NAME, cookie:NAME or query:NAME; verify: false or a mapping",
                            "properties": {
                                "from": {"type": "string", "pattern": "^\\s*(header|cookie|query)\\s*:.+$"},
                                "verify": {"oneOf": [{"const": False}, {
                                    "type": "object", "additionalProperties": False,
                                    "description": "one of secret, secret_env, public_key_file, jwks_file",
                                    "properties": {
                                        "secret": {"type": "string"}, "secret_env": {"type": "string"},
                                        "public_key_file": {"type": "string"}, "jwks_file": {"type": "string"},
                                        "issuer": {"type": "string"},
                                        "audience": {"oneOf": [{"type": "string"},
                                                               {"type": "array", "items": {"type": "string"}}]},
                                        "leeway": {"type": "number", "minimum": 0},
                                        "algorithms": {"oneOf": [{"type": "string"},
                                                                 {"type": "array", "items": {"type": "string"}}]}}}]},
                            }},
                    "geoip_db": {"type": "string", "description": "a MaxMind DB file, relative to the rules file"},
                    "strip_routing_headers": {"type": "boolean",
                                              "description": "remove the headers a route's conditions read "
                                                             "before forwarding"},
                },
            },
            "routes": {"type": "array", "items": {"$ref": "#/$defs/route"}},
            "imports": {"type": "array", "items": {"type": "string"},
                        "description": "HTTPRoute, VirtualService or KrakenD files (relative to this file) whose "
                                       "routes come after this file's own"},
        },
        "$defs": {
            "route": {
                "type": "object", "required": ["backends"], "additionalProperties": False,
                "properties": {
                    "name": _name,
                    "match": {"type": "object", "additionalProperties": False, "properties": match_props,
                              "description": "omitted = every request"},
                    "backends": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/backend"}},
                    "enabled": {"type": "boolean", "description": "false: the route is skipped (condroute.enable "
                                                                  "switches it on while the proxy runs)"},
                },
            },
            "backend": backend,
            "condition": {"type": "object", "minProperties": 1, "additionalProperties": False,
                          "properties": condition_props,
                          "description": "every key must hold"},
            "matcher": {
                "description": "a scalar (equals), a list (one of), or a mapping of matcher forms",
                "oneOf": [_scalar, {"type": "array", "items": _scalar, "minItems": 1},
                          {"$ref": "#/$defs/matcher_object"}],
            },
            "matcher_object": matcher_object,
        },
    }


def schema_json() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"
