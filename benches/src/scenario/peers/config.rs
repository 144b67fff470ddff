//! The peers' configurations, generated into the temporary directory, and their processes.
//! Each does the job of the node's `/echo` route bridged to the upstream: TLS 1.3 only
//! with the fixture's ECDSA P-256 certificate, the Origin checked against the one allowed
//! value, the ES256 bearer token verified (signature and `exp`) with the bench public key,
//! then the upgrade proxied to the plain upstream echo server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;

use crate::fixture::{ORIGIN, PATH};
use crate::proc::Server;
use crate::scenario::Setup;

/// The njs module Debian's `libnginx-mod-http-js` installs.
pub const NJS_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_js_module.so";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    Envoy,
    Haproxy,
    Nginx,
}

impl PeerKind {
    pub const ALL: [PeerKind; 3] = [PeerKind::Envoy, PeerKind::Haproxy, PeerKind::Nginx];

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Envoy => "envoy",
            PeerKind::Haproxy => "haproxy",
            PeerKind::Nginx => "nginx-njs",
        }
    }

    fn program(self) -> &'static str {
        match self {
            PeerKind::Envoy => "envoy",
            PeerKind::Haproxy => "haproxy",
            PeerKind::Nginx => "nginx",
        }
    }

    /// What the peer checks at the upgrade.
    pub fn checks(self) -> &'static str {
        match self {
            PeerKind::Envoy => "jwt_authn local_jwks ES256 (signature, exp) + RBAC on Origin",
            PeerKind::Haproxy => "jwt_verify ES256 with the PEM key + exp via jwt_payload_query + Origin ACL",
            PeerKind::Nginx => "njs WebCrypto ECDSA P-256 ES256 (signature, exp) via auth_request + Origin by `if`",
        }
    }
}

/// The binary on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|f| f.is_file()))
}

/// The peer's binary and version, or why it cannot run.
pub fn find(kind: PeerKind) -> Result<(PathBuf, String), String> {
    let bin = which(kind.program()).ok_or_else(|| format!("{} not on PATH (scripts/install-peers.sh installs it)", kind.program()))?;
    if kind == PeerKind::Nginx && !Path::new(NJS_MODULE).is_file() {
        return Err(format!("{NJS_MODULE} missing (apt libnginx-mod-http-js; scripts/install-peers.sh)"));
    }
    let arg = match kind {
        PeerKind::Envoy => "--version",
        PeerKind::Haproxy => "-v",
        PeerKind::Nginx => "-v",
    };
    let out = std::process::Command::new(&bin).arg(arg).output().map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let version = match kind {
        PeerKind::Envoy => text.split("version: ").nth(1).and_then(|v| v.split('/').nth(1)).map(|v| format!("envoy {v}")),
        PeerKind::Haproxy => text.split_whitespace().nth(2).map(|v| format!("haproxy {v}")),
        PeerKind::Nginx => text.split('/').nth(1).map(|v| format!("nginx {} + njs (Debian libnginx-mod-http-js)", v.trim())),
    };
    Ok((bin, version.unwrap_or_else(|| kind.program().into())))
}

/// The bench ES256 public key: its PEM, and its SPKI DER.
fn public_key(setup: &Setup) -> anyhow::Result<(String, Vec<u8>)> {
    let pem = setup.fixture.policy_doc.auth.keys.first().and_then(|k| k.public_key_pem.clone()).context("no bench public key")?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body.trim()).context("the bench public key PEM")?;
    Ok((pem, der))
}

/// The JWKS of the bench key: x and y are the last 64 bytes of the P-256 SPKI
/// (an uncompressed point 0x04 || x || y).
fn jwks(der: &[u8]) -> anyhow::Result<String> {
    if der.len() < 65 || der[der.len() - 65] != 4 {
        bail!("the bench public key is not an uncompressed P-256 point");
    }
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (x, y) = (&der[der.len() - 64..der.len() - 32], &der[der.len() - 32..]);
    Ok(serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "bench", "use": "sig", "x": b64(x), "y": b64(y)}]})
        .to_string())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the peer's configuration and starts it on `addr`, bridged to `upstream`.
pub fn spawn(setup: &Setup, kind: PeerKind, bin: &Path, addr: SocketAddr, upstream: SocketAddr) -> anyhow::Result<Server> {
    let f = &setup.fixture;
    let dir = f.dir.path().join(format!("{}-{}", kind.name(), addr.port()));
    std::fs::create_dir_all(&dir)?;
    let log = f.dir.path().join(format!("{}-{}.log", kind.name(), addr.port()));
    let (cert, key) = (f.cert.display().to_string(), f.key.display().to_string());
    let (pem, der) = public_key(setup)?;
    let (port, up) = (addr.port(), upstream.port());
    let d = dir.display().to_string();
    let args: Vec<String> = match kind {
        PeerKind::Envoy => {
            let cfg = dir.join("envoy.yaml");
            write(&cfg, &envoy_yaml(port, up, &cert, &key, &jwks(&der)?))?;
            // Two workers, as palisade's tokio runtime has one per CPU; no hot restart (no
            // shared memory between the instances); warnings only (no access log).
            [
                "-c",
                &cfg.display().to_string(),
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "-l",
                "warning",
                "--log-path",
                &format!("{d}/envoy.log"),
            ]
            .map(String::from)
            .to_vec()
        }
        PeerKind::Haproxy => {
            let crt = dir.join("wss.pem");
            let pub_pem = dir.join("jwt.pub.pem");
            let bundle = format!("{}\n{}", std::fs::read_to_string(&f.cert)?, std::fs::read_to_string(&f.key)?);
            write(&crt, &bundle)?;
            write(&pub_pem, &pem)?;
            let cfg = dir.join("haproxy.cfg");
            write(&cfg, &haproxy_cfg(port, up, &crt.display().to_string(), &pub_pem.display().to_string()))?;
            // Foreground, one process (no master-worker).
            ["-db", "-f", &cfg.display().to_string()].map(String::from).to_vec()
        }
        PeerKind::Nginx => {
            let js = dir.join("jwt.js");
            write(&js, &njs_verifier(&base64::engine::general_purpose::STANDARD.encode(&der)))?;
            let cfg = dir.join("nginx.conf");
            write(&cfg, &nginx_conf(port, up, &cert, &key, &d))?;
            // A master and its workers, in the foreground.
            ["-p", &d, "-e", &format!("{d}/error.log"), "-c", &cfg.display().to_string(), "-g", "daemon off;"].map(String::from).to_vec()
        }
    };
    Server::spawn(kind.name(), bin, &args, &log, addr)
}

fn envoy_yaml(port: u16, up: u16, cert: &str, key: &str, jwks: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: wss
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            alpn_protocols: [http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: "{cert}"}}
              private_key: {{filename: "{key}"}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: wss
          codec_type: HTTP1
          upgrade_configs: [{{upgrade_type: websocket}}]
          stream_idle_timeout: 3600s
          route_config:
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{path: "{PATH}"}}
                route: {{cluster: upstream, timeout: 0s, idle_timeout: 3600s}}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  local_jwks: {{inline_string: '{jwks}'}}
                  from_headers: [{{name: Authorization, value_prefix: "Bearer "}}]
                  forward: true
              rules:
              - match: {{prefix: /}}
                requires: {{provider_name: bench}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  origin:
                    permissions: [{{any: true}}]
                    principals: [{{header: {{name: origin, string_match: {{exact: "{ORIGIN}"}}}}}}]
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: upstream
    connect_timeout: 5s
    type: STATIC
    # The defaults (1,024 connections, pending and active requests) would refuse the idle
    # phase's 2,000 bridged sessions.
    circuit_breakers:
      thresholds: [{{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000}}]
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]
"#
    )
}

fn haproxy_cfg(port: u16, up: u16, crt: &str, pub_pem: &str) -> String {
    format!(
        r#"global
  maxconn 9000
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 3600s
  timeout tunnel 3600s
  timeout http-request 10s
frontend wss
  bind 127.0.0.1:{port} ssl crt {crt} alpn http/1.1 ssl-min-ver TLSv1.3
  http-request deny status 404 unless {{ path {PATH} }}
  http-request deny status 403 unless {{ req.hdr(origin) -m str {ORIGIN} }}
  http-request set-var(txn.alg) http_auth_bearer,jwt_header_query('$.alg')
  http-request deny status 401 unless {{ var(txn.alg) -m str ES256 }}
  http-request deny status 403 unless {{ http_auth_bearer,jwt_verify("ES256","{pub_pem}") -m int 1 }}
  http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('$.exp','int')
  http-request deny status 403 if {{ date,neg,add(txn.exp) -m int le 0 }}
  default_backend upstream
backend upstream
  server up 127.0.0.1:{up}
"#
    )
}

fn nginx_conf(port: u16, up: u16, cert: &str, key: &str, dir: &str) -> String {
    format!(
        r#"load_module {NJS_MODULE};
user root;
worker_processes 2;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 9000; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  js_import jwt from {dir}/jwt.js;
  upstream upstream {{ server 127.0.0.1:{up}; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    location = {PATH} {{
      if ($http_origin != "{ORIGIN}") {{ return 403; }}
      auth_request /_jwt;
      proxy_pass http://upstream;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
    location = /_jwt {{
      internal;
      js_content jwt.verify;
    }}
  }}
}}
"#
    )
}

/// njs (0.7) verifier: ES256 with WebCrypto (`crypto.subtle.verify`, ECDSA P-256,
/// SHA-256; a JWS signature is the raw r || s that WebCrypto takes), then `exp`. The key is
/// imported at every request: njs gives each request a fresh VM, nothing is kept between.
fn njs_verifier(spki_b64: &str) -> String {
    format!(
        r#"const SPKI = Buffer.from('{spki_b64}', 'base64');
async function verify(r) {{
  try {{
    const h = r.headersIn['Authorization'] || '';
    if (!h.startsWith('Bearer ')) {{ r.return(401); return; }}
    const p = h.slice(7).split('.');
    if (p.length !== 3) {{ r.return(401); return; }}
    const head = JSON.parse(Buffer.from(p[0], 'base64url').toString());
    if (head.alg !== 'ES256') {{ r.return(401); return; }}
    const key = await crypto.subtle.importKey('spki', SPKI, {{name: 'ECDSA', namedCurve: 'P-256'}}, false, ['verify']);
    const ok = await crypto.subtle.verify({{name: 'ECDSA', hash: 'SHA-256'}}, key, Buffer.from(p[2], 'base64url'), Buffer.from(p[0] + '.' + p[1]));
    if (!ok) {{ r.return(403); return; }}
    const claims = JSON.parse(Buffer.from(p[1], 'base64url').toString());
    if (typeof claims.exp !== 'number' || claims.exp <= Date.now() / 1000) {{ r.return(403); return; }}
    r.return(204);
  }} catch (e) {{
    r.error('jwt: ' + e);
    r.return(401);
  }}
}}
export default {{verify}};
"#
    )
}
