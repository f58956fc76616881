"""KrakenD ``auth/validator`` (krakend-jose) → the model's :class:`~condroute.model.TokenCheck`.

Where the keys come from, in order (nothing is ever fetched):

1. ``jwk_local_path``, relative to the KrakenD file;
2. the importing condroute file's ``settings.jwt.verify`` (``jwks_file``, ``public_key_file``,
   ``secret``...; ``verify: false`` decodes tokens without checking them), which stands in for every
   ``jwk_url`` of the imported file;
3. none: a located warning naming the fix; the check is not enforced (the caller skips endpoints
   whose conditionals read a propagated header)."""
from __future__ import annotations

import json
import os
import re

from ..model import ClaimHeader, TokenCheck
from ..node import Y
from .ctx import CompileCtx, kind

VALIDATOR = ("auth/validator", "github.com/devopsfaith/krakend-jose/validator")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# the kind of key (JWK kty) each algorithm needs
_KTY = {"HS": ("oct",), "RS": ("RSA",), "PS": ("RSA",), "ES": ("EC",), "Ed": ("OKP",)}


def validator_node(extra: Y | None) -> Y | None:
    if extra is None or not isinstance(extra.v, dict):
        return None
    return next((extra.v[k] for k in VALIDATOR if k in extra.v), None)


def _strs(node: Y | None) -> tuple[str, ...]:
    if node is None:
        return ()
    if isinstance(node.v, str):
        return (node.v,) if node.v else ()
    if isinstance(node.v, list):
        return tuple(n.v for n in node.v if isinstance(n.v, str) and n.v)
    return ()


def _text(v: dict, key: str, default: str = "") -> str:
    n = v.get(key)
    return n.v if n is not None and isinstance(n.v, str) and n.v else default


def _true(v: dict, key: str) -> bool:
    n = v.get(key)
    return n is not None and n.v is True


def token_check(node: Y, ep: str, cc: CompileCtx) -> TokenCheck | None:
    """The endpoint's check; None (with an error recorded) when the validator is malformed."""
    label = f"endpoint {ep}: auth/validator"
    if not cc.expect_map(node, "auth/validator"):
        return None
    v = node.v
    alg = _text(v, "alg", "RS256")
    leeway = 0.0
    if "leeway" in v and isinstance(v["leeway"].v, str):
        leeway = sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(v["leeway"].v))
    claims: list[ClaimHeader] = []
    pc = v.get("propagate_claims")
    preserve = _true(v, "propagate_claims_preserve_array")
    if pc is not None:
        items = pc.v if isinstance(pc.v, list) else None
        if items is None:
            cc.error(pc, f"{label}: propagate_claims must be a list of [claim, header] pairs, not {kind(pc.v)}")
            return None
        for it in items:
            pair = it.v if isinstance(it.v, list) else None
            if pair is None or len(pair) != 2 or not all(isinstance(x.v, str) and x.v for x in pair):
                cc.error(it, f"{label}: each propagate_claims entry must be a [claim, header] pair of names")
                return None
            claims.append(ClaimHeader(pair[1].v, pair[0].v, preserve))
    kis = _text(v, "key_identify_strategy", "kid")
    if kis != "kid":
        cc.warn(v["key_identify_strategy"], f"{label}: key_identify_strategy {kis!r}: condroute finds the key "
                                            "by kid when the token has one, else tries every key")
    keys, keys_file, decode_only = _keys(node, label, alg, cc)
    return TokenCheck(
        label=label, keys=keys, keys_file=keys_file, decode_only=decode_only, algorithms=(alg,),
        audience=_strs(v.get("audience")), issuer=_text(v, "issuer") or None, leeway=leeway,
        header=_text(v, "auth_header_name", "Authorization").lower(), cookie=_text(v, "cookie_key", "access_token"),
        require_kid=kis == "kid", roles_key=_text(v, "roles_key", "roles"), roles=_strs(v.get("roles")),
        roles_nested=_true(v, "roles_key_is_nested"), scopes_key=_text(v, "scopes_key", "scope"),
        scopes=_strs(v.get("scopes")), scopes_nested=_true(v, "scopes_key_is_nested"),
        scopes_all=_text(v, "scopes_matcher", "any") == "all", claim_headers=tuple(claims))


def _keys(node: Y, label: str, alg: str, cc: CompileCtx) -> tuple[Y | None, str, bool]:
    """(a verify-shaped mapping, the file its paths are relative to, decode only)."""
    v = node.v
    local = v.get("jwk_local_path")
    missing = ""
    if local is not None and isinstance(local.v, str) and local.v:
        full = cc.resolve_path(local.v)
        if os.path.isfile(full):
            if "secret_url" in v or "cypher_key" in v:
                cc.warn(v.get("secret_url") or v["cypher_key"], f"{label}: an encrypted key set (secret_url, "
                                                                 "cypher_key) cannot be read by condroute")
                return None, "", False
            if not _fits(full, alg, cc, local, label):
                return None, "", False
            return Y({"jwk_local_path": Y(full, local.line, local.col)}, local.line, local.col), cc.file, False
        missing = f"jwk_local_path {local.v} does not exist ({full})"
    imp = cc.importer
    jwt = getattr(getattr(imp, "settings", None), "jwt", None) if imp is not None else None
    verify = jwt.v.get("verify") if jwt is not None and isinstance(jwt.v, dict) else None
    at = local if missing else v.get("jwk_url") or node
    if verify is not None and verify.v is False:
        cc.warn(at, f"{label}: tokens are only decoded, not verified (settings.jwt.verify: false in "
                    f"{imp.file}): anyone can forge the claims it propagates")
        return None, imp.file, True
    if verify is not None and isinstance(verify.v, dict):
        if not _fits_verify(verify, imp.file, alg, cc, at, label):
            return None, "", False
        return verify, imp.file, False
    url = _text(v, "jwk_url")
    why = missing or (f"jwk_url {url} cannot be fetched offline" if url else "it names no key (jwk_url or "
                                                                              "jwk_local_path)")
    cc.warn(at, f"{label}: not enforced: {why}; import this file from a condroute file whose "
                "settings.jwt.verify.jwks_file holds that key set (or verify: false to only decode tokens)")
    return None, "", False


def _fits(path: str, alg: str, cc: CompileCtx, at: Y, label: str) -> bool:
    """Whether the JWK set at ``path`` has a key of ``alg``'s kind (else a located warning)."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(4 * 1024 * 1024).decode("utf-8-sig"))
    except (OSError, ValueError):
        return True      # the compiler reports it, located
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and keys is None and "kty" in doc:
        keys = [doc]
    if not isinstance(keys, list):
        return True
    want = _KTY.get(alg[:2], ())
    if any(isinstance(k, dict) and k.get("kty") in want and k.get("alg") in (None, alg) for k in keys):
        return True
    cc.warn(at, f"{label}: not enforced: the key set {path} has no key for {alg}")
    return False


def _fits_verify(verify: Y, file: str, alg: str, cc: CompileCtx, at: Y, label: str) -> bool:
    v = verify.v
    if "jwks_file" in v and isinstance(v["jwks_file"].v, str):
        full = v["jwks_file"].v
        full = full if os.path.isabs(full) else os.path.join(os.path.dirname(os.path.abspath(file)), full)
        return _fits(full, alg, cc, at, label + f" (keys from {os.path.basename(file)})")
    if ("secret" in v or "secret_env" in v) and not alg.startswith("HS"):
        cc.warn(at, f"{label}: not enforced: the importing file's settings.jwt.verify has a secret, which "
                    f"cannot check {alg} tokens")
        return False
    if "public_key_file" in v and alg.startswith("HS"):
        cc.warn(at, f"{label}: not enforced: the importing file's settings.jwt.verify has a public key, which "
                    f"cannot check {alg} tokens")
        return False
    return True


def reads_claim_header(cond: Y | None, names: frozenset[str]) -> tuple[Y, str] | None:
    """Where a backend/conditional reads a propagated header (lower-case), if it does: a header
    strategy's name, or a name written in a policy."""
    if cond is None or not isinstance(cond.v, dict) or not names:
        return None
    sn, nn, vn = cond.v.get("strategy"), cond.v.get("name"), cond.v.get("value")
    if sn is not None and sn.v == "header" and nn is not None and isinstance(nn.v, str):
        return (nn, nn.v.lower()) if nn.v.lower() in names else None
    if sn is not None and sn.v == "policy" and vn is not None and isinstance(vn.v, str):
        low = vn.v.lower()
        hit = next((n for n in sorted(names) if n in low), None)
        return (vn, hit) if hit is not None else None
    return None
