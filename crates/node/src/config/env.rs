//! Overrides from `PALISADE_*` environment variables, and paths relative to the
//! configuration file.

use super::*;

impl NodeConfig {
    /// `PALISADE_NODE_ID`, `PALISADE_CLUSTER`, `PALISADE_WSS_ADDR`, `PALISADE_CONTROL_ADDR`,
    /// `PALISADE_DATA_THREADS`,
    /// `PALISADE_TLS_CERT`, `PALISADE_TLS_KEY`, `PALISADE_POLICY_FILE`,
    /// `PALISADE_TRUSTED_PROXIES` (comma-separated CIDRs), `PALISADE_ETCD_ENDPOINTS`
    /// (comma-separated; creates the `[etcd]` section with its defaults when missing).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("PALISADE_NODE_ID") {
            self.id = Some(v);
        }
        if let Some(v) = get("PALISADE_CLUSTER") {
            self.cluster = v;
        }
        if let Some(v) = get("PALISADE_WSS_ADDR") {
            self.listen.wss = v.parse().map_err(|_| field("PALISADE_WSS_ADDR", "not a socket address"))?;
        }
        if let Some(v) = get("PALISADE_CONTROL_ADDR") {
            self.listen.control = Some(v.parse().map_err(|_| field("PALISADE_CONTROL_ADDR", "not a socket address"))?);
        }
        if let Some(v) = get("PALISADE_DATA_THREADS") {
            self.listen.data_threads = Some(v.trim().parse().map_err(|_| field("PALISADE_DATA_THREADS", "not a number"))?);
        }
        if let Some(v) = get("PALISADE_TLS_CERT") {
            self.tls.cert = Some(v.into());
        }
        if let Some(v) = get("PALISADE_TLS_KEY") {
            self.tls.key = Some(v.into());
        }
        if let Some(v) = get("PALISADE_POLICY_FILE") {
            self.policy_file = Some(v.into());
        }
        if let (Some(cert), Some(key), Some(ca)) = (get("PALISADE_CONTROL_CERT"), get("PALISADE_CONTROL_KEY"), get("PALISADE_CONTROL_CA")) {
            self.control = Some(ControlConfig { cert: cert.into(), key: key.into(), ca: ca.into() });
        }
        if let Some(v) = get("PALISADE_TRUSTED_PROXIES") {
            self.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().map_err(|_| field("PALISADE_TRUSTED_PROXIES", format!("`{s}` is not a CIDR"))))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get("PALISADE_ETCD_ENDPOINTS") {
            let endpoints: Vec<String> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if endpoints.is_empty() {
                return Err(field("PALISADE_ETCD_ENDPOINTS", "no endpoint given"));
            }
            match &mut self.etcd {
                Some(e) => e.endpoints = endpoints,
                None => self.etcd = Some(EtcdConfig::new(endpoints)),
            }
        }
        Ok(())
    }

    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
        };
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.policy_file);
        if let Some(c) = &mut self.control {
            for p in [&mut c.cert, &mut c.key, &mut c.ca] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        for r in &mut self.routes {
            fix(&mut r.upstream_ca);
            fix(&mut r.schema);
        }
        if let Some(e) = &mut self.etcd {
            fix(&mut e.ca);
            fix(&mut e.cert);
            fix(&mut e.key);
            fix(&mut e.password_file);
        }
    }
}
