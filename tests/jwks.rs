//! `auth.jwks_url`: keys fetched from a real HTTP server, refetched for an unknown kid at
//! most once per minimum interval (no fetch storms), rotation picked up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::EncodingKey;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use palisade_testkit::{TestKey, TestNode, policy, refused};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");

fn jwk(k: &TestKey) -> Jwk {
    let enc = match k.alg {
        "ES256" => EncodingKey::from_ec_pem(k.private.as_bytes()),
        "EdDSA" => EncodingKey::from_ed_pem(k.private.as_bytes()),
        _ => EncodingKey::from_rsa_pem(k.private.as_bytes()),
    }
    .expect("key");
    let alg = palisade_policy::jwt::parse_alg(k.alg).expect("alg");
    let mut j = Jwk::from_encoding_key(&enc, alg).expect("jwk");
    j.common.key_id = Some(k.kid.clone());
    j
}

/// A JWKS endpoint serving whatever `doc` holds, counting requests.
async fn jwks_server(doc: Arc<Mutex<String>>, hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let doc = doc.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(m) => n += m,
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let body = doc.lock().expect("lock").clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_refetch_on_unknown_kid_without_storms() {
    let a = TestKey::generate("jwks-a", "ES256");
    let b = TestKey::generate("jwks-b", "RS256");
    let doc = Arc::new(Mutex::new(serde_json::to_string(&JwkSet { keys: vec![jwk(&a)] }).expect("json")));
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = jwks_server(doc.clone(), hits.clone()).await;
    let mut p = policy(&[]);
    p.auth.jwks_url = Some(format!("http://127.0.0.1:{}/.well-known/jwks.json", addr.port()));
    let node = TestNode::start(Some(&p), |_| {}).await;

    let ta = format!("Bearer {}", a.token(json!({})));
    assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &ta)]).await.is_ok(), "a JWKS key verifies");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // A flood of tokens naming unknown kids: no refetch within the minimum interval.
    for i in 0..20 {
        let k = TestKey::generate(&format!("made-up-{i}"), "ES256");
        let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &format!("Bearer {}", k.token(json!({}))))]).await);
        assert_eq!(r.code, "token_invalid");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "no fetch storm");

    // Rotation: the issuer publishes key b; a token naming it triggers one refetch.
    node.handle.state.jwks().set_min_interval(Duration::from_millis(200));
    assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &ta)]).await.is_ok());
    let before = hits.load(Ordering::SeqCst);
    *doc.lock().expect("lock") = serde_json::to_string(&JwkSet { keys: vec![jwk(&a), jwk(&b)] }).expect("json");
    let tb = format!("Bearer {}", b.token(json!({})));
    // Within the refetch interval an unknown kid is refused without a fetch; once it has
    // passed, one fetch finds the new key.
    palisade_testkit::eventually(Duration::from_secs(5), "the new kid is fetched and accepted", || async {
        node.ws("/echo", &[ORIGIN, ("Authorization", &tb)]).await.is_ok().then_some(())
    })
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), before + 1, "exactly one refetch");
    assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &tb)]).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), before + 1, "cached afterwards");
}
