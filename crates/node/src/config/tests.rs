use super::*;

const BASE: &str = r#"
[listen]
wss = "127.0.0.1:8443"
[tls]
cert = "c.pem"
key = "k.pem"
[[routes]]
path = "/echo"
echo = true
"#;

#[test]
fn etcd_section_defaults_and_validation() {
    let cfg = NodeConfig::from_toml(BASE).expect("parses");
    assert!(cfg.etcd.is_none());
    let cfg = NodeConfig::from_toml(&format!("{BASE}[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n")).expect("parses");
    let e = cfg.etcd.as_ref().expect("etcd");
    assert_eq!((e.lease_ttl_seconds, e.timeout_ms), (10, 2000));
    cfg.validate().expect("valid");

    let bad = NodeConfig::from_toml(&format!("{BASE}[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n")).expect("parses");
    assert!(matches!(bad.validate(), Err(ConfigError::Field { field, .. }) if field == "etcd.endpoints[0]"));
    let bad = NodeConfig::from_toml(&format!("{BASE}[etcd]\nendpoints = [\"http://e:2379\"]\nlease_ttl_seconds = 1\n")).expect("parses");
    assert!(matches!(bad.validate(), Err(ConfigError::Field { field, .. }) if field == "etcd.lease_ttl_seconds"));
    let bad = NodeConfig::from_toml(&format!("{BASE}[etcd]\nendpoints = [\"http://e:2379\"]\nca = \"ca.pem\"\n")).expect("parses");
    assert!(matches!(bad.validate(), Err(ConfigError::Field { field, .. }) if field == "etcd.endpoints"));
    assert!(NodeConfig::from_toml(&format!("{BASE}[etcd]\nendpoints = []\nbogus = 1\n")).is_err(), "unknown fields refused");
}

#[test]
fn etcd_user_and_password_file_go_together() {
    let section = |extra: &str| format!("{BASE}[etcd]\nendpoints = [\"http://e:2379\"]\n{extra}");
    let mut cfg = NodeConfig::from_toml(&section("username = \"palisade-node\"\npassword_file = \"pw\"\n")).expect("parses");
    cfg.validate().expect("valid");
    cfg.resolve_paths(std::path::Path::new("/etc/palisade"));
    let e = cfg.etcd.as_ref().expect("etcd");
    assert_eq!(e.username.as_deref(), Some("palisade-node"));
    assert_eq!(e.password_file.as_deref(), Some(std::path::Path::new("/etc/palisade/pw")));
    for (extra, missing) in [
        ("username = \"palisade-node\"\n", "etcd.password_file"),
        ("password_file = \"pw\"\n", "etcd.username"),
        ("username = \"\"\npassword_file = \"pw\"\n", "etcd.username"),
    ] {
        let bad = NodeConfig::from_toml(&section(extra)).expect("parses");
        assert!(matches!(bad.validate(), Err(ConfigError::Field { field, .. }) if field == missing), "{extra}");
    }
}

#[test]
fn etcd_endpoints_from_the_environment() {
    let mut cfg = NodeConfig::from_toml(BASE).expect("parses");
    cfg.apply_env(|k| (k == "PALISADE_ETCD_ENDPOINTS").then(|| " http://a:2379, http://b:2379 ,".to_owned())).expect("env");
    let e = cfg.etcd.as_ref().expect("section created");
    assert_eq!(e.endpoints, ["http://a:2379", "http://b:2379"]);
    assert_eq!(e.lease_ttl_seconds, 10);
    assert!(cfg.apply_env(|k| (k == "PALISADE_ETCD_ENDPOINTS").then(|| " , ".to_owned())).is_err());
}

#[test]
fn data_threads_default_to_the_cpus_and_are_bounded() {
    let cfg = NodeConfig::from_toml(BASE).expect("parses");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(cfg.listen.data_threads(), cpus.min(MAX_DATA_THREADS));
    let with = |line: &str| {
        NodeConfig::from_toml(&BASE.replace("wss = \"127.0.0.1:8443\"", &format!("wss = \"127.0.0.1:8443\"\n{line}"))).expect("parses")
    };
    let cfg = with("data_threads = 3");
    cfg.validate().expect("valid");
    assert_eq!(cfg.listen.data_threads(), 3);
    for bad in ["data_threads = 0", "data_threads = 257"] {
        assert!(matches!(with(bad).validate(), Err(ConfigError::Field { field, .. }) if field == "listen.data_threads"), "{bad}");
    }
    let mut cfg = NodeConfig::from_toml(BASE).expect("parses");
    cfg.apply_env(|k| (k == "PALISADE_DATA_THREADS").then(|| " 1 ".to_owned())).expect("env");
    assert_eq!(cfg.listen.data_threads(), 1);
    assert!(cfg.apply_env(|k| (k == "PALISADE_DATA_THREADS").then(|| "many".to_owned())).is_err());
}
