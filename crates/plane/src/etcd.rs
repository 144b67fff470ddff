//! etcd, as node and controller both reach it: connect options and the key layout of
//! SPEC section 8.
//!
//! | key | value |
//! |---|---|
//! | `/palisade/<cluster>/nodes/<node-id>` | [`crate::NodeRecord`] as JSON, under the node's lease |
//! | `/palisade/<cluster>/policy` | the policy document (YAML or JSON); its version is the key's mod revision |
//! | `/palisade/<cluster>/tickets/<id>` | a one-time ticket, under a lease of its TTL |

use std::path::Path;
use std::time::Duration;

use etcd_client::ConnectOptions;

/// A file the etcd connection needs (a TLS file, the password file) could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the etcd file {path}: {source}")]
pub struct TlsFileError {
    pub path: String,
    pub source: std::io::Error,
}

/// etcd client options: timeouts, keep-alive, TLS when a CA or a client certificate is
/// given, and etcd v3 authentication when `user` names a user and its password file
/// (read here, once; the password is never logged). The file holds the password alone;
/// one trailing newline is ignored.
pub fn connect_options(
    timeout: Duration,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    user: Option<(&str, &Path)>,
) -> Result<ConnectOptions, TlsFileError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsFileError { path: p.display().to_string(), source });
    let mut options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        // A half-open connection (a dead peer, a partition) is noticed within ~15 s even
        // on the long-lived watch and keep-alive streams. etcd refuses pings more often
        // than every 5 s.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if ca.is_some() || cert.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (cert, key) {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    if let Some((name, password_file)) = user {
        let password = read_password(password_file)?;
        // etcd's simple tokens expire (5 minutes by default): authenticate again when
        // a request meets an expired token.
        options = options.with_user(name, password).with_auto_token_refresh(true);
    }
    Ok(options)
}

/// The password in `path`, without one trailing newline; an empty password is an error.
pub fn read_password(path: &Path) -> Result<String, TlsFileError> {
    let err = |source| TlsFileError { path: path.display().to_string(), source };
    let text = std::fs::read_to_string(path).map_err(err)?;
    let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if password.is_empty() {
        return Err(err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the password file is empty")));
    }
    Ok(password.to_owned())
}

/// The keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys { prefix: format!("/palisade/{cluster}") }
    }

    /// The prefix under which every node record lives (ends with `/`).
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, id: &str) -> String {
        format!("{}/nodes/{id}", self.prefix)
    }

    pub fn policy(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    pub fn ticket(&self, id: &str) -> String {
        format!("{}/tickets/{id}", self.prefix)
    }

    /// The prefix of one subject's fleet-wide connection slots (ends with `/`). The
    /// subject is base64url-encoded: a `sub` may hold `/` or any other byte.
    pub fn user_slots(&self, sub: &str) -> String {
        use base64::Engine as _;
        format!("{}/users/{}/", self.prefix, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sub))
    }

    /// Slot `i` of a subject (0 to the cap - 1): held by one session at a time.
    pub fn user_slot(&self, sub: &str, i: u64) -> String {
        format!("{}{i}", self.user_slots(sub))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn password_file_loses_one_trailing_newline_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("palisade-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("pw");
        for (text, want) in
            [("s3cret\n", Some("s3cret")), ("s3cret\r\n", Some("s3cret")), ("s3 cret", Some("s3 cret")), ("\n", None), ("", None)]
        {
            std::fs::write(&p, text).expect("write");
            assert_eq!(super::read_password(&p).ok().as_deref(), want, "{text:?}");
        }
        let e = super::read_password(&dir.join("missing")).expect_err("missing file");
        assert!(e.to_string().contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_follow_the_spec_layout() {
        let k = super::Keys::new("prod");
        assert_eq!(k.nodes(), "/palisade/prod/nodes/");
        assert_eq!(k.node("n1"), "/palisade/prod/nodes/n1");
        assert_eq!(k.policy(), "/palisade/prod/policy");
        assert_eq!(k.ticket("t"), "/palisade/prod/tickets/t");
        assert_eq!(k.user_slots("a/b"), "/palisade/prod/users/YS9i/");
        assert_eq!(k.user_slot("alice", 2), "/palisade/prod/users/YWxpY2U/2");
    }
}
