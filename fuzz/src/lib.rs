//! What the fuzz targets share: one compiled policy and one node state (built once per
//! process), an HS256 signer for tokens the fuzzer shapes, the invariants every verified
//! token must meet, and the WebSocket frame model ([`ws`]).

pub mod policy;
pub mod ws;

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use palisade_node::{NodeConfig, NodeState};
use palisade_policy::{Claims, CompiledPolicy, Policy};

/// The clock of every verification (2027-01-15).
pub const NOW: u64 = 1_800_000_000;
pub const ISSUER: &str = "https://auth.example.com";
pub const AUDIENCE: &str = "palisade";
pub const LEEWAY: u64 = 30;
/// The HS256 key `k1` (its base64 is in [`POLICY_YAML`]).
pub const HS_SECRET: &[u8] = b"palisade-fuzz-secret-0123456789ab";

/// The policy the targets run under: three keys (HMAC, ECDSA, EdDSA), an issuer and an
/// audience, revocations of each kind, access rules on two routes, exact and wildcard
/// origins.
pub const POLICY_YAML: &str = r#"
origins: { allow: ["https://app.example.com", "https://*.example.com", "http://localhost:8080"], allow_missing: false }
auth:
  carriers: [header, subprotocol, query, ticket]
  issuer: https://auth.example.com
  audience: [palisade]
  leeway_seconds: 30
  max_token_lifetime_seconds: 86400
  keys:
    - { kid: k1, alg: HS256, secret_base64: "cGFsaXNhZGUtZnV6ei1zZWNyZXQtMDEyMzQ1Njc4OWFi" }
    - kid: ec
      alg: ES256
      public_key_pem: |
        -----BEGIN PUBLIC KEY-----
        MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEnzs5HCGkglaAxo95Bzo5oVGvSaqf
        7vhju1RC11UImn0x56p/qKjESma9tjqHZDZGm3XVsgqgNnJRCfNCuMXLcg==
        -----END PUBLIC KEY-----
    - kid: ed
      alg: EdDSA
      public_key_pem: |
        -----BEGIN PUBLIC KEY-----
        MCowBQYDK2VwAyEA5GC3hUFJrZpwUdu/WQk29Md7r1LU0u+WGHrSf/Grpqw=
        -----END PUBLIC KEY-----
revocations:
  - { sub: revoked-user }
  - { sub: old-user, issued_before: "2027-01-01T00:00:00Z" }
  - { jti: revoked-jti, expires: "2028-01-01T00:00:00Z" }
access:
  - { route: /admin, require: { claims: { role: [admin, ops] }, scopes: ["ws:admin"] } }
  - { route: /chat, require: { scopes: ["chat:read"] } }
"#;

/// The node the gate's steps run on: two routes, trusted proxies in 10/8, 127.0.0.1 and
/// 2001:db8::/32.
pub const NODE_TOML: &str = r#"
trusted_proxies = ["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"]
[listen]
wss = "127.0.0.1:8443"
[tls]
cert = "c.pem"
key = "k.pem"
[[routes]]
path = "/echo"
echo = true
[[routes]]
path = "/admin"
echo = true
"#;

pub fn policy() -> &'static CompiledPolicy {
    static P: OnceLock<CompiledPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let doc = Policy::from_yaml_or_json(POLICY_YAML).expect("fixture policy parses");
        doc.compile(1).expect("fixture policy compiles")
    })
}

pub fn node() -> Arc<NodeState> {
    static N: OnceLock<Arc<NodeState>> = OnceLock::new();
    N.get_or_init(|| {
        let config = NodeConfig::from_toml(NODE_TOML).expect("fixture node config");
        NodeState::new(config).expect("fixture node state")
    })
    .clone()
}

/// A current-thread runtime, one per process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"))
}

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.claims` (already encoded) signed with HS256 under [`HS_SECRET`].
pub fn sign_segments(header_b64: &str, claims_b64: &str) -> String {
    let input = format!("{header_b64}.{claims_b64}");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, HS_SECRET);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// A compact JWS of these exact header and claims bytes, signed with HS256.
pub fn sign_hs256(header: &[u8], claims: &[u8]) -> String {
    sign_segments(&b64url(header), &b64url(claims))
}

/// A verified segment's JSON; `None` when it is JSON no `Value` holds (a number beyond
/// f64 in a member nobody reads: the verifier skips it unread, as it may).
fn segment_json(token: &str, i: usize) -> Option<serde_json::Value> {
    let seg = token.split('.').nth(i).expect("three segments");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seg).expect("a verified segment is base64url");
    assert!(std::str::from_utf8(&raw).is_ok(), "a verified segment is not UTF-8");
    match serde_json::from_slice(&raw) {
        Ok(v) => Some(v),
        Err(_) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&raw).expect("a verified segment is JSON");
            None
        }
    }
}

/// What a token that verified under [`policy`] must be: its header and claims are UTF-8
/// JSON objects, the claims with the `sub`, `jti`, `iss` and `aud` the policy asked for,
/// it is neither expired nor revoked, its header names a known key of its `alg` and no
/// `crit`, and the claims kept for the upstream are the token's own payload segment.
pub fn check_verified(token: &str, c: &Claims) {
    let p = policy();
    assert_eq!(Some(c.claims_b64.as_str()), token.split('.').nth(1), "claims_b64 is the payload segment");
    assert!(!c.sub.is_empty());
    assert!(c.exp <= palisade_policy::jwt::MAX_UNIX && c.exp + LEEWAY > NOW, "exp {}", c.exp);
    assert!(c.iat.is_none_or(|iat| iat <= NOW + LEEWAY), "iat in the future");
    assert!(!p.verifier.revocations.is_revoked(&c.sub, c.jti.as_deref(), c.iat), "revoked token accepted");
    p.verifier.still_valid(c, NOW).expect("a token just verified is still valid");
    assert!(p.access.check("/echo", &c.claims_b64).is_ok(), "a route without a rule accepts any valid token");

    if let Some(header) = segment_json(token, 0) {
        let header = header.as_object().expect("a verified token's header is an object");
        assert!(!header.contains_key("crit"), "crit header accepted");
        let kid = header.get("kid").and_then(|k| k.as_str());
        assert_eq!(c.kid.as_deref(), kid, "kid");
        let alg = header.get("alg").and_then(|a| a.as_str()).expect("alg");
        match kid {
            Some("k1") => assert_eq!(alg, "HS256"),
            Some("ec") => assert_eq!(alg, "ES256"),
            Some("ed") => assert_eq!(alg, "EdDSA"),
            other => panic!("verified with no known kid: {other:?}"),
        }
    }
    let Some(claims) = segment_json(token, 1) else {
        // Claims no `Value` holds cannot meet a rule: refused, never let through.
        for route in ["/admin", "/chat"] {
            assert_eq!(p.access.check(route, &c.claims_b64).map_err(|d| d.reason), Err("claims_unreadable"));
        }
        return;
    };
    let claims = claims.as_object().unwrap_or_else(|| panic!("verified claims are not a JSON object: {claims}"));
    assert_eq!(claims.get("sub").and_then(|s| s.as_str()), Some(c.sub.as_str()), "sub");
    assert_eq!(claims.get("jti").and_then(|s| s.as_str()), c.jti.as_deref(), "jti");
    assert_eq!(claims.get("iss").and_then(|s| s.as_str()), Some(ISSUER), "iss");
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == AUDIENCE,
        Some(serde_json::Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "aud");
    // Access rules read the same claims.
    for route in ["/admin", "/chat"] {
        if let Err(d) = p.access.check(route, &c.claims_b64) {
            assert!(d.rule < 2 && d.reason != "claims_unreadable", "rule {} {}", d.rule, d.reason);
        }
    }
}

/// The trusted proxies of [`NODE_TOML`], as the policy crate reads them.
pub fn trusted() -> palisade_policy::client_addr::TrustedProxies {
    palisade_policy::client_addr::TrustedProxies::new(
        ["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"].iter().map(|n| n.parse().expect("net")).collect(),
    )
}
