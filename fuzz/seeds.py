#!/usr/bin/env python3
"""Writes the seed corpora, fuzz/corpus/<target>/<name>: a handful of small real inputs
per target (valid request heads, tokens, policies from docs/policy.md, frames). Run from
anywhere; needs protoc (the policy_proto seeds are encoded from text format). The seeds
are committed; what a fuzzer grows goes to fuzz/corpus-run/ (git-ignored)."""
import base64
import hashlib
import hmac
import json
import os
import shutil
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
NOW = 1_800_000_000
SECRET = b"palisade-fuzz-secret-0123456789ab"
EC_PEM = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEnzs5HCGkglaAxo95Bzo5oVGvSaqf
7vhju1RC11UImn0x56p/qKjESma9tjqHZDZGm3XVsgqgNnJRCfNCuMXLcg==
-----END PUBLIC KEY-----
"""
ED_PEM = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA5GC3hUFJrZpwUdu/WQk29Md7r1LU0u+WGHrSf/Grpqw=
-----END PUBLIC KEY-----
"""
EC_X, EC_Y = "nzs5HCGkglaAxo95Bzo5oVGvSaqf7vhju1RC11UImn0", "Meeqf6ioxEpmvbY6h2Q2Rpt11bIKoDZyUQnzQrjFy3I"
ED_X = "5GC3hUFJrZpwUdu_WQk29Md7r1LU0u-WGHrSf_Grpqw"
RSA_N = (
    "o7239-S3UyIHYLjM20XKjobNFByJCpux4dzwIfdbVu5Y85OQ8OywQl0TqyB9aTY-KeQEpFo-BczFlTlORsomSLSM7ToOgo60r6CT3c3Eb9ch5hbr2izWzvVt2"
    "1248Dy4H69FV41JNFYi24UquD1tVUsZPoDe0V5BiUij8dIUU9lJtMH4OKWxlJsYp80K_4fsRmdrgBIcUiANnch98ixK2EIfF9wbIgSFNDQluCDfyVfKQhH1qH"
    "njj2hUuN4_u5OUI_feoTAhE7SReG_Xm7o31abm0u8i4IzRbLUfSKwe4S6AfvVs9IPjaNpi5veAcXbTiXWW4ORL_7xc3sDWx9dT6Q"
)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(header, claims):
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    c = claims if isinstance(claims, bytes) else json.dumps(claims, separators=(",", ":")).encode()
    signing = f"{b64(h)}.{b64(c)}"
    sig = hmac.new(SECRET, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


HS = {"alg": "HS256", "kid": "k1"}
GOOD = {"sub": "alice", "iss": "https://auth.example.com", "aud": "palisade", "iat": NOW - 10, "exp": NOW + 600, "jti": "t-1"}
TOKEN = token(HS, GOOD)


def frame(b0, payload, mask=b"\x12\x34\x56\x78"):
    n = len(payload)
    if n <= 125:
        head = bytes([b0, 0x80 | n])
    elif n <= 65535:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(p ^ mask[i % 4] for i, p in enumerate(payload))


def frames_input(config, sizes, stream):
    return bytes([config, len(sizes) - 1]) + bytes(sizes) + stream


POLICY_YAML = f"""origins: {{ allow: ["https://app.example.com", "https://*.example.com"], allow_missing: false }}
auth:
  carriers: [header, subprotocol, query, ticket]
  issuer: https://auth.example.com
  audience: [palisade]
  leeway_seconds: 30
  max_token_lifetime_seconds: 86400
  keys:
    - {{ kid: "2026-01", alg: ES256, public_key_pem: {json.dumps(EC_PEM)} }}
    - {{ kid: "ed", alg: EdDSA, public_key_pem: {json.dumps(ED_PEM)} }}
    - {{ kid: "legacy", alg: HS256, secret_base64: "{base64.b64encode(SECRET).decode()}" }}
  jwks_url: https://auth.example.com/.well-known/jwks.json
  refresh: {{ warning_seconds: 60, grace_seconds: 30, interval_seconds: 3600 }}
  tickets: {{ ttl_seconds: 30 }}
limits:
  max_connections: 50000
  per_ip:   {{ max_connections: 50, handshakes_per_second: 10, burst: 20 }}
  per_user: {{ max_connections: 10, handshakes_per_second: 2, burst: 5, fleet_max_connections: 20 }}
  messages: {{ max_bytes: 65536, per_second: 50, burst: 100, max_buffered_bytes: 1048576 }}
  handshake_timeout_ms: 5000
  idle_timeout_seconds: 60
  ping_interval_seconds: 25
egress: {{ alert_bytes_per_minute: 10485760, action: log }}
revocations:
  - {{ sub: "user-42", issued_before: "2026-11-25T10:00:00Z" }}
  - {{ jti: "b1946ac9", expires: "2026-11-26T10:00:00Z" }}
access:
  - {{ route: /admin, require: {{ claims: {{ role: [admin, ops] }}, scopes: ["ws:admin"] }} }}
  - {{ route: /chat, require: {{ scopes: ["chat:read", "chat:write"] }} }}
"""
MINIMAL_YAML = f"""auth:
  keys:
    - {{ kid: k1, alg: HS256, secret_base64: "{base64.b64encode(SECRET).decode()}" }}
"""
POLICY_JSON = json.dumps(
    {
        "origins": {"allow": ["https://app.example.com", "http://localhost:8080"], "allow_missing": True},
        "auth": {
            "carriers": ["header", "ticket"],
            "keys": [{"kid": "ed", "alg": "EdDSA", "public_key_pem": ED_PEM}],
            "refresh": {"warning_seconds": 30, "grace_seconds": 10},
        },
        "limits": {"messages": {"max_bytes": 1024, "per_second": 0.5, "burst": 3, "max_buffered_bytes": 4096}},
        "egress": {"alert_bytes_per_minute": 1000, "action": "disconnect"},
        "revocations": [{"sub": "user-7"}, {"sub": "user-8", "issued_before": "2026-01-01T00:00:00.5+02:00"}],
    },
    indent=1,
)
POLICY_TEXTPB = f"""origins {{ allow: "https://app.example.com" allow: "https://*.example.com" }}
auth {{
  carriers: "header" carriers: "query"
  issuer: "https://auth.example.com"
  audience: "palisade"
  leeway_seconds: 30
  keys {{ kid: "k1" alg: "HS256" secret_base64: "{base64.b64encode(SECRET).decode()}" }}
  keys {{ kid: "ec" alg: "ES256" public_key_pem: {json.dumps(EC_PEM)} }}
  refresh {{ warning_seconds: 60 grace_seconds: 30 interval_seconds: 600 }}
  tickets {{ ttl_seconds: 20 }}
}}
limits {{
  max_connections: 1000
  per_ip {{ max_connections: 5 handshakes_per_second: 2.5 burst: 4 }}
  messages {{ max_bytes: 2048 per_second: 10 burst: 20 max_buffered_bytes: 65536 }}
  idle_timeout_seconds: 30 ping_interval_seconds: 10
}}
egress {{ alert_bytes_per_minute: 5000 action: "log" }}
revocations {{ jti: "j-1" }}
access {{ route: "/admin" claims {{ key: "role" value {{ values: "admin" }} }} scopes: "ws:admin" }}
"""


def protobuf(message, text):
    proto = os.path.join(HERE, "..", "proto")
    out = subprocess.run(
        ["protoc", f"--encode={message}", "-I", proto, "palisade/policy/v1/policy.proto"],
        input=text.encode(),
        capture_output=True,
        check=True,
    )
    return out.stdout


def head(lines):
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


UPGRADE = [
    "GET /echo HTTP/1.1",
    "Host: edge.example.com",
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
    "Origin: https://app.example.com",
]

SEEDS = {
    "request_head": {
        "bearer": head(UPGRADE + [f"Authorization: Bearer {TOKEN}"]),
        "query": head([f"GET /admin?access_token={TOKEN}&x=1 HTTP/1.1"] + UPGRADE[1:]),
        "ticket": head(["GET /echo?ticket=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA HTTP/1.1"] + UPGRADE[1:]),
        "subprotocol": head(UPGRADE + [f"Sec-WebSocket-Protocol: chat.v1, bearer.{TOKEN}"]),
        "proxied": head(UPGRADE + ["X-Forwarded-For: 198.51.100.7, 10.0.0.9", "X-Forwarded-For: 10.1.1.1"]),
        "tickets_post": head(
            ["POST /v1/tickets HTTP/1.1", "Host: edge", "Origin: https://a.example.com", f"Authorization: Bearer {TOKEN}", "Content-Length: 2"]
        )
        + b"{}",
        "healthz": head(["GET /healthz HTTP/1.0", "Host: edge"]),
    },
    "credentials": {
        "header": f"Bearer {TOKEN}\0\0".encode(),
        "subprotocol": f"\0chat.v1, bearer.{TOKEN}\x01json\0".encode(),
        "query": b"\0\0x=1&access_token=abc.def.ghi",
        "ticket": b"\0\0ticket=t1&b=2",
        "ambiguous": b"Bearer a\x01bearer  b\0bearer.c\0access%5Ftoken=a%2Eb&token=&ticket",
        "escapes": b"\0\0%zz=%E9&+k+=%ff&tic%6Bet=x",
    },
    "origin": {
        "exact": b"\x00https://app.example.com\nhttps://*.example.com\nHTTPS://App.Example.COM:443/",
        "wildcard": b"\x00https://*.example.com:8443\nhttps://a.b.example.com:8443",
        "localhost": b"\x01http://localhost:8080\nhttp://127.0.0.1\nws://localhost:8080",
        "ipv6": b"\x00https://[::1]:8443\nhttps://[0:0::1]:8443",
        "null": b"\x00https://app.example.com\nnull",
    },
    "forwarded_for": {
        "chain": b"\x00198.51.100.7, 10.2.2.2",
        "ports": b"\x02[2001:db8::1]:443\n203.0.113.1:5678",
        "garbage": b"\x01unknown, 1.2.3.4\n",
        "mapped": b"\x03::ffff:198.51.100.1, 10.0.0.1",
        "untrusted": b"\x04\xff\xfe\n1.2.3.4",
    },
    "jwt_token": {
        "valid": TOKEN.encode(),
        "expired": token(HS, {**GOOD, "exp": NOW - 3600}).encode(),
        "none": (b64(b'{"alg":"none","kid":"k1"}') + "." + b64(json.dumps(GOOD).encode()) + ".").encode(),
        "es256": (b64(b'{"alg":"ES256","kid":"ec"}') + "." + b64(json.dumps(GOOD).encode()) + "." + b64(b"\x01" * 64)).encode(),
        "eddsa": (b64(b'{"alg":"EdDSA","kid":"ed"}') + "." + b64(json.dumps(GOOD).encode()) + "." + b64(b"\x02" * 64)).encode(),
        "crit": token({**HS, "crit": ["exp"]}, GOOD).encode(),
        "padded": (base64.urlsafe_b64encode(json.dumps(HS).encode()).decode() + "." + b64(json.dumps(GOOD).encode()) + ".x").encode(),
    },
    "jwt_claims": {
        "good": json.dumps(GOOD).encode(),
        "floats": json.dumps({**GOOD, "exp": 1.8000006e9, "nbf": 1.7e9, "iat": 1.5e9}).encode(),
        "aud_list": json.dumps({**GOOD, "aud": ["x", "palisade"], "scope": "ws:admin", "role": "admin"}).encode(),
        "revoked": json.dumps({**GOOD, "sub": "old-user", "iat": 1}).encode(),
        "huge_exp": json.dumps({**GOOD, "exp": 18446744073709551615}).encode(),
        "header_ec": b'{"alg":"ES256","kid":"ec"}\0' + json.dumps(GOOD).encode(),
        "header_crit": b'{"alg":"HS256","kid":"k1","crit":null}\0' + json.dumps(GOOD).encode(),
        "array": json.dumps(["alice", NOW + 600, None, NOW - 10, "https://auth.example.com", "palisade", "t-1"]).encode(),
    },
    "jwks": {
        "keys": json.dumps(
            {
                "keys": [
                    {"kty": "EC", "crv": "P-256", "kid": "ec", "x": EC_X, "y": EC_Y, "use": "sig"},
                    {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": ED_X, "alg": "EdDSA"},
                    {"kty": "RSA", "kid": "rsa", "n": RSA_N, "e": "AQAB", "alg": "RS256", "key_ops": ["verify"]},
                ]
            }
        ).encode(),
        "skipped": json.dumps(
            {
                "keys": [
                    {"kty": "oct", "kid": "h", "k": b64(SECRET), "alg": "HS256"},
                    {"kty": "RSA", "kid": "enc", "n": RSA_N, "e": "AQAB", "use": "enc"},
                    {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y},
                ]
            }
        ).encode(),
    },
    "control_msg": {
        "ping": b'{"type":"ping"}',
        "auth": b' {"type":"auth","token":"a.b.c"}',
        "auth_bad": b'{"type":"auth","token":5}',
        "app": b'{"type":"chat","text":"hi \\u00e9"}',
        "escaped": b'{"ty\\u0070e":"p\\u0069ng","x":[1,{"type":"auth"}]}',
    },
    "policy_yaml": {"docs": POLICY_YAML.encode(), "minimal": MINIMAL_YAML.encode()},
    "policy_json": {"doc": POLICY_JSON.encode(), "minimal": json.dumps({"auth": {"keys": [{"kid": "k", "alg": "HS384", "secret_base64": base64.b64encode(SECRET * 2).decode()}]}}).encode()},
    "policy_proto": {
        "policy": protobuf("palisade.policy.v1.Policy", POLICY_TEXTPB),
        "versioned": protobuf("palisade.policy.v1.VersionedPolicy", "version: 9\npolicy {\n" + POLICY_TEXTPB + "}\n"),
        "versioned_yaml": protobuf("palisade.policy.v1.VersionedPolicy", f"version: 3\nyaml: {json.dumps(MINIMAL_YAML)}\n"),
    },
    "timestamps": {
        "utc": b"2026-11-25T10:00:00Z",
        "offset": b"2026-11-25T10:00:00.123456+05:30",
        "epoch": b"1970-01-01T00:00:00Z",
        "max": b"9999-12-31T23:59:59-00:00",
        "leap": b"2016-12-31t23:59:60z",
        "ttl_m": b"15m",
        "ttl_d": b" 1d ",
        "ttl_plain": b"3600",
        "ttl_max": b"18446744073709551615",
    },
    "tickets": {
        "query": b"x=1&ticket=" + b64(bytes(range(32))).encode(),
        "body": b'{"origin":"HTTPS://App.Example.com:443/"}',
        "body_empty": b"{}",
        "stored": json.dumps(
            {"sub": "u", "exp": NOW, "iat": NOW - 5, "jti": "j", "kid": "k1", "claims_b64": "e30", "origin": "https://a.example.com", "expires_unix_ms": 1}
        ).encode(),
    },
    "session_frames": {
        # config: limit 1024, burst 1e6; chunks of 3 bytes and of 1 byte after a Pending.
        "text": frames_input(0x0A, [2, 0x80], frame(0x81, b"hello")),
        "fragmented_utf8": frames_input(0x0A, [4], frame(0x01, "h\u00e9".encode()[:2]) + frame(0x89, b"p") + frame(0x80, "h\u00e9".encode()[2:] + b"!")),
        "binary_16bit": frames_input(0x0B, [0x7F, 9], frame(0x82, bytes(range(200)))),
        "ping_pong_close": frames_input(0x08, [0], frame(0x89, b"hi") + frame(0x8A, b"") + frame(0x88, b"\x03\xe8bye") + frame(0x81, b"after")),
        "ping_flood": frames_input(0x00, [5], frame(0x89, b"") + frame(0x89, b"")),
        "slow_consumer": frames_input(0x0A, [0x7F], b"".join(frame(0x89, b"x" * 125) for _ in range(9))),
        "too_big": frames_input(0x00, [1], frame(0x82, b"x" * 17)),
        # limit 16: fragments adding up to the limit, and to one byte more.
        "fragments_at_limit": frames_input(0x08, [3], frame(0x02, b"a" * 8) + frame(0x00, b"b" * 4) + frame(0x80, b"c" * 4)),
        "fragments_over_limit": frames_input(0x08, [6], frame(0x01, b"a" * 8) + frame(0x80, b"b" * 9)),
        "unmasked": frames_input(0x0A, [0], b"\x81\x02hi"),
        "bad_close": frames_input(0x0A, [0], frame(0x88, b"\x03")),
        "len64": frames_input(0x03, [0], b"\x82\xff" + struct.pack(">Q", 70000) + b"\0\0\0\0"),
    },
}


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    for target, seeds in SEEDS.items():
        d = os.path.join(CORPUS, target)
        os.makedirs(d)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
    print(f"seeds written to {CORPUS}: {sum(len(s) for s in SEEDS.values())} files")


if __name__ == "__main__":
    main()
