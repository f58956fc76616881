"""Builders shared by the identity tests (JWT keys and tokens, a tiny GeoIP database), and tests
that the builders themselves produce what the other tests assume."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import maxminddb
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "k" * 40                      # an HS256 secret long enough not to be warned about

# -- keys ------------------------------------------------------------------------------------------
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)   # a key nobody trusts
_EC = ec.generate_private_key(ec.SECP256R1())
_ED = ed25519.Ed25519PrivateKey.generate()


def pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


RSA_PRIVATE, RSA_PUBLIC_PEM = _RSA, pem_public(_RSA)
OTHER_RSA_PRIVATE = _RSA2
EC_PRIVATE, EC_PUBLIC_PEM = _EC, pem_public(_EC)
ED_PRIVATE, ED_PUBLIC_PEM = _ED, pem_public(_ED)


def jwks(*pairs: tuple[str, object], alg: bool = True) -> dict:
    """A JWK set of public keys: (kid, private key) pairs."""
    keys = []
    for kid, key in pairs:
        algo = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        d = json.loads(algo.to_jwk(key.public_key()))
        d["kid"] = kid
        d["use"] = "sig"
        if alg:
            d["alg"] = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        keys.append(d)
    return {"keys": keys}


# -- tokens ----------------------------------------------------------------------------------------
def claims(**extra) -> dict:
    now = int(time.time())
    return {"sub": "user-1", "iat": now, "exp": now + 3600, **extra}


def hs256(payload: dict | None = None, secret: str = SECRET, **headers) -> str:
    return jwt.encode(payload if payload is not None else claims(), secret, algorithm="HS256", headers=headers or None)


def rs256(payload: dict | None = None, key=RSA_PRIVATE, kid: str | None = None, alg: str = "RS256") -> str:
    return jwt.encode(payload if payload is not None else claims(), key, algorithm=alg,
                      headers={"kid": kid} if kid else None)


def es256(payload: dict | None = None, key=EC_PRIVATE, kid: str | None = None) -> str:
    return jwt.encode(payload if payload is not None else claims(), key, algorithm="ES256",
                      headers={"kid": kid} if kid else None)


def eddsa(payload: dict | None = None, key=ED_PRIVATE) -> str:
    return jwt.encode(payload if payload is not None else claims(), key, algorithm="EdDSA")


def _b64(d: dict | bytes) -> str:
    raw = d if isinstance(d, bytes) else json.dumps(d, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def alg_none(payload: dict | None = None, alg: str = "none") -> str:
    """An unsigned token, as an attacker would write it."""
    return f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(payload if payload is not None else claims())}."


def forged(payload: dict) -> str:
    """A token whose claims were changed after signing: a valid header and signature, other claims."""
    h, _, s = hs256(claims()).split(".")
    return f"{h}.{_b64(payload)}.{s}"


def hs256_with_rsa_public_key_as_secret(payload: dict | None = None) -> str:
    """The classic key-confusion attack: sign HS256 with the server's public RSA key as the secret."""
    import hashlib
    import hmac
    header = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64(payload if payload is not None else claims())
    sig = hmac.new(RSA_PUBLIC_PEM, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


# -- GeoIP ----------------------------------------------------------------------------------------
def _country(code: str, name: str, geoname: int, eu: bool = False) -> dict:
    d = {"geoname_id": geoname, "iso_code": code, "names": {"en": name}}
    if eu:
        d["is_in_european_union"] = True
    return d


EU = {"code": "EU", "geoname_id": 6255148, "names": {"en": "Europe"}}
NA = {"code": "NA", "geoname_id": 6255149, "names": {"en": "North America"}}
GEO_NETWORKS = {
    # address block -> record (MaxMind's GeoIP2-Country layout)
    "89.160.20.0/24": {"continent": EU, "country": _country("SE", "Sweden", 2661886, eu=True),
                       "registered_country": _country("SE", "Sweden", 2661886, eu=True)},
    "81.2.69.0/24": {"continent": EU, "country": _country("GB", "United Kingdom", 2635167),
                     "registered_country": _country("GB", "United Kingdom", 2635167)},
    "216.160.83.0/24": {"continent": NA, "country": _country("US", "United States", 6252001),
                        "registered_country": _country("US", "United States", 6252001)},
    # a US military base in Germany: located in DE, represented by the US
    "2.125.160.0/24": {"continent": EU, "country": _country("DE", "Germany", 2921044, eu=True),
                       "registered_country": _country("US", "United States", 6252001),
                       "represented_country": {**_country("IT", "Italy", 3175395, eu=True), "type": "military"}},
    "2001:db8:1::/48": {"continent": NA, "country": _country("CA", "Canada", 6251999),
                        "registered_country": _country("CA", "Canada", 6251999)},
}
SE_IP, GB_IP, US_IP, REPRESENTED_IP, CA_IP6 = "89.160.20.112", "81.2.69.160", "216.160.83.56", "2.125.160.216", "2001:db8:1::5"
UNKNOWN_IP = "198.51.100.7"


def build_geo_db(path: Path, networks: dict | None = None) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Country", languages=["en"],
                   description="condroute test database", int_type="u32")
    for net, rec in (networks or GEO_NETWORKS).items():
        w.insert_network(IPSet([net]), rec)
    w.to_db_file(str(path))
    return path


# -- tests of the builders ------------------------------------------------------------------------
def test_geo_db_builder_writes_a_database_maxminddb_reads(tmp_path):
    path = build_geo_db(tmp_path / "geo.mmdb")
    with maxminddb.open_database(str(path)) as r:
        assert r.metadata().database_type == "GeoIP2-Country"
        assert r.get(SE_IP)["country"]["iso_code"] == "SE"
        assert r.get(SE_IP)["country"]["is_in_european_union"] is True
        assert r.get(GB_IP)["country"]["iso_code"] == "GB"
        assert r.get(REPRESENTED_IP)["represented_country"]["iso_code"] == "IT"
        assert r.get(CA_IP6)["country"]["iso_code"] == "CA"
        assert r.get(UNKNOWN_IP) is None
        assert r.get("127.0.0.1") is None


def test_token_builders():
    assert jwt.decode(hs256(claims(role="x")), SECRET, algorithms=["HS256"])["role"] == "x"
    assert jwt.decode(rs256(), RSA_PUBLIC_PEM, algorithms=["RS256"])["sub"] == "user-1"
    assert jwt.get_unverified_header(alg_none())["alg"] == "none"
    assert jwt.get_unverified_header(hs256_with_rsa_public_key_as_secret())["alg"] == "HS256"


def identity_env(d: Path):
    """Rules with every identity setting (trusted proxy, a GeoIP database written into ``d``, a
    verified HS256 JWT) and no routes: the environment CEL policies are compiled against."""
    from condroute.rules import load_rules_text
    build_geo_db(d / "geo.mmdb")
    return load_rules_text(f"""version: 1
settings:
  trusted_proxies: [127.0.0.1/32]
  geoip_db: geo.mmdb
  jwt: {{verify: {{secret: {SECRET}}}}}
routes: []
""", str(d / "rules.yaml"))
