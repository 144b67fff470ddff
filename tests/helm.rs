//! The Helm chart (`helm/palisade`) and the Dockerfile with the real tools: helm 3.18 (and
//! 4.x where installed) `lint --strict` and `template`, every rendered manifest through
//! `kubernetes-validate --strict` for Kubernetes 1.30 and the newest version it knows,
//! the values schema refusing bad values, hadolint on the Dockerfile, and the rendered
//! node and controller configuration fed to `palisade node|controller --check-config`
//! with real certificate files at the paths the chart mounts, so that chart and binary
//! cannot drift apart.
//!
//! The tools come from `scripts/install-helm.sh` (called by `scripts/install-deps.sh`). A
//! missing tool fails the test with that advice; `PALISADE_HELM` and `PALISADE_HELM4`
//! name other helm binaries.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart() -> PathBuf {
    root().join("helm").join("palisade")
}

/// A tool on PATH, or in Python's scripts directory (where pip puts console scripts).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Ok(out) = Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]).output() {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    dirs.push(PathBuf::from("/usr/local/bin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("`{name}` is not installed: run scripts/install-helm.sh (as root)"))
}

/// helm 3 (required) and helm 4 (when installed), each with its `version --short`.
fn helms() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let h3 = std::env::var_os("PALISADE_HELM").map(PathBuf::from).unwrap_or_else(|| tool("helm"));
    let v3 = version(&h3);
    assert!(v3.starts_with("v3.18"), "{} is helm {v3}, expected 3.18 (scripts/install-helm.sh)", h3.display());
    out.push((h3, v3));
    if let Some(h4) = std::env::var_os("PALISADE_HELM4").map(PathBuf::from).or_else(|| find_tool("helm4")) {
        let v4 = version(&h4);
        assert!(v4.starts_with("v4."), "{} is helm {v4}, expected 4.x", h4.display());
        out.push((h4, v4));
    }
    out
}

fn version(helm: &Path) -> String {
    let out = Command::new(helm).args(["version", "--short"]).output().expect("run helm version");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `helm template` of the chart with these values files and `--set` pairs.
fn template(helm: &Path, values: &[&Path], set: &[&str]) -> Output {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "edge"]).arg(chart()).args(["--namespace", "palisade"]);
    for v in values {
        cmd.arg("-f").arg(v);
    }
    for s in set {
        cmd.args(["--set", s]);
    }
    run(&mut cmd)
}

fn rendered(helm: &Path, values: &[&Path]) -> String {
    let out = template(helm, values, &[]);
    assert!(out.status.success(), "helm template {values:?} failed:\n{}", text(&out));
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

fn ci_values() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("helm/palisade/ci")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.iter().any(|p| p.ends_with("all-features-values.yaml")), "ci/all-features-values.yaml is missing");
    v
}

/// The newest Kubernetes version kubernetes-validate knows: its default (`--help`).
fn newest_kubernetes(kv: &Path) -> String {
    let help = text(&run(Command::new(kv).arg("--help")));
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let v =
        flat.split("Defaults to ").nth(1).and_then(|r| r.split_whitespace().next()).expect("kubernetes-validate --help names its default");
    v.trim_end_matches('.').to_owned()
}

fn validate(kv: &Path, k8s: &str, manifests: &str, what: &str) {
    let mut child = Command::new(kv)
        .args(["--strict", "-k", k8s, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubernetes-validate");
    child.stdin.take().expect("stdin").write_all(manifests.as_bytes()).expect("write manifests");
    let out = child.wait_with_output().expect("kubernetes-validate");
    let t = text(&out);
    assert!(out.status.success(), "kubernetes-validate --strict -k {k8s} refused {what}:\n{t}");
    let passed = t.lines().filter(|l| l.contains("passed for resource")).count();
    let kinds = manifests.matches("\nkind: ").count();
    for l in t.lines().filter(|l| !l.contains("passed for resource")) {
        // cert-manager's kinds are CRDs: kubernetes-validate has no schema for them; the
        // Certificates are checked field by field in `cert_manager_certificates_carry_the_roles`.
        assert!(
            l.contains("Couldn't find schema for kind") && l.contains("cert-manager.io/v1"),
            "kubernetes-validate {k8s} on {what}: {l}"
        );
    }
    let crds = manifests.matches("apiVersion: cert-manager.io/v1").count();
    assert_eq!(passed + crds, kinds, "{what} on {k8s}: every manifest validated (or a cert-manager kind):\n{t}");
}

#[test]
fn chart_lints_and_every_rendering_validates_on_kubernetes_1_30_and_the_newest() {
    let kv = tool("kubernetes-validate");
    let yamllint = tool("yamllint");
    let newest = newest_kubernetes(&kv);
    let lint_cfg = "{extends: default, rules: {line-length: disable, document-start: disable, indentation: {indent-sequences: whatever}, comments: {min-spaces-from-content: 1}}}";
    let out = run(Command::new(&yamllint).args(["-d", lint_cfg]).arg(chart().join("values.yaml")));
    assert!(out.status.success(), "yamllint values.yaml:\n{}", text(&out));
    for (helm, v) in helms() {
        let mut sets: Vec<Vec<PathBuf>> = vec![vec![]];
        sets.extend(ci_values().into_iter().map(|p| vec![p]));
        for values in &sets {
            let refs: Vec<&Path> = values.iter().map(PathBuf::as_path).collect();
            let what = format!("helm {v} with {}", if refs.is_empty() { "the default values".to_owned() } else { format!("{refs:?}") });
            let mut lint = Command::new(&helm);
            lint.args(["lint", "--strict"]).arg(chart());
            for r in &refs {
                lint.arg("-f").arg(r);
            }
            let out = run(&mut lint);
            assert!(out.status.success() && text(&out).contains("0 chart(s) failed"), "{what}: lint --strict:\n{}", text(&out));
            let manifests = rendered(&helm, &refs);
            for k8s in ["1.30", newest.as_str()] {
                validate(&kv, k8s, &manifests, &what);
            }
            let mut child = Command::new(&yamllint)
                .args(["-d", lint_cfg, "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("yamllint");
            child.stdin.take().expect("stdin").write_all(manifests.as_bytes()).expect("write");
            let out = child.wait_with_output().expect("yamllint");
            assert!(out.status.success(), "{what}: yamllint on the rendered manifests:\n{}", text(&out));
        }
    }
}

/// The rendered manifests as YAML documents.
fn documents(manifests: &str) -> Vec<serde_yaml_ng::Value> {
    manifests
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(d).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

fn find<'a>(docs: &'a [serde_yaml_ng::Value], kind: &str, name: &str) -> &'a serde_yaml_ng::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn str_list(v: &serde_yaml_ng::Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

#[test]
fn cert_manager_certificates_carry_the_roles() {
    let (helm, _) = helms().remove(0);
    let docs = documents(&rendered(&helm, &[&chart().join("ci").join("all-features-values.yaml")]));
    let uris = |name: &str| str_list(&find(&docs, "Certificate", name)["spec"]["uris"]);
    assert_eq!(uris("edge-palisade-node-control"), ["spiffe://palisade/prod-eu/node/any"]);
    assert_eq!(uris("edge-palisade-controller"), ["spiffe://palisade/prod-eu/controller"]);
    assert_eq!(uris("edge-palisade-operator"), ["spiffe://palisade/prod-eu/operator"]);
    assert!(uris("edge-palisade-wss").is_empty(), "the WSS certificate is never a control identity");
    for name in [
        "edge-palisade-node-control",
        "edge-palisade-controller",
        "edge-palisade-operator",
        "edge-palisade-wss",
        "edge-palisade-etcd-client",
    ] {
        let spec = &find(&docs, "Certificate", name)["spec"];
        assert_eq!(spec["secretName"].as_str(), Some(name), "{name}: the Secret the pods mount");
        assert!(spec["issuerRef"]["name"].as_str().is_some_and(|n| !n.is_empty()), "{name}: issuerRef");
    }
    assert_eq!(find(&docs, "Certificate", "edge-palisade-wss")["spec"]["issuerRef"]["name"].as_str(), Some("letsencrypt"));
    assert_eq!(find(&docs, "Certificate", "edge-palisade-ca")["spec"]["isCA"].as_bool(), Some(true));
    assert_eq!(find(&docs, "Certificate", "edge-palisade-etcd-client")["spec"]["commonName"].as_str(), Some("palisade-prod-eu"));

    // The node pods: drain-aware grace period, hardened, probes on the WSS port.
    let pod = &find(&docs, "Deployment", "edge-palisade-node")["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"].as_i64(), Some(10 + 60 + 20));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(str_list(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(c["securityContext"]["runAsUser"].as_i64(), Some(65532));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(c["readinessProbe"]["httpGet"]["scheme"].as_str(), Some("HTTPS"));
    assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"].as_i64(), Some(10));
    let annotations = &find(&docs, "Deployment", "edge-palisade-node")["spec"]["template"]["metadata"]["annotations"];
    assert!(annotations["checksum/config"].as_str().is_some_and(|s| s.len() == 64), "config checksum annotation");
    let hpa = &find(&docs, "HorizontalPodAutoscaler", "edge-palisade-node")["spec"]["metrics"];
    assert_eq!(hpa[1]["pods"]["metric"]["name"].as_str(), Some("palisade_connections_active"));
}

#[test]
fn a_config_change_changes_the_checksum_that_rolls_the_pods() {
    let (helm, _) = helms().remove(0);
    let checksum = |set: &[&str]| {
        let out = template(&helm, &[], set);
        assert!(out.status.success(), "{}", text(&out));
        let docs = documents(&String::from_utf8_lossy(&out.stdout));
        find(&docs, "Deployment", "edge-palisade-node")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum")
            .to_owned()
    };
    assert_ne!(checksum(&[]), checksum(&["node.drainDeadlineSeconds=45"]));
}

// ---- values the schema refuses, each naming the key ----

fn refused(set: &str, key_in_message: &str) {
    for (helm, v) in helms() {
        let out = template(&helm, &[], &[set]);
        let t = text(&out);
        assert!(!out.status.success(), "helm {v}: --set {set} was accepted");
        assert!(t.contains(key_in_message), "helm {v}: the refusal of --set {set} names `{key_in_message}`:\n{t}");
    }
}

#[test]
fn schema_refuses_an_unknown_key() {
    refused("node.replica=3", "replica");
    refused("bogus=1", "bogus");
}

#[test]
fn schema_refuses_negative_replicas() {
    refused("node.replicas=-1", "replicas");
}

#[test]
fn schema_refuses_an_unknown_tls_mode() {
    refused("node.tlsMode=tls13", "tlsMode");
}

// ---- the rendered configuration through `--check-config` ----

struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

fn new_ca() -> Ca {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, "Palisade test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let pem = params.self_signed(&key).expect("ca").pem();
    Ca { params, key, pem }
}

/// (certificate PEM, key PEM) signed by `ca`, with DNS names and URI SANs.
fn leaf(ca: &Ca, dns: &[&str], uris: &[&str], not_after_days: Option<i64>) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    for u in uris {
        p.subject_alt_names.push(rcgen::SanType::URI((*u).try_into().expect("uri")));
    }
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    if let Some(days) = not_after_days {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
        let (y, m, d) = civil((now / 86_400) + days);
        p.not_after = rcgen::date_time_ymd(y as i32, m as u8, d as u8);
    }
    let issuer = rcgen::Issuer::new(ca.params.clone(), &ca.key);
    let cert = p.signed_by(&key, &issuer).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

/// Days since 1970-01-01 to (year, month, day).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The chart rendered with TLS to etcd, an upstream route with its CA and a JSON Schema,
/// and a policy with a real key; the files it names created under `dir` (the chart's
/// `/etc/palisade/...` paths rewritten into it). Returns (node.toml, controller.toml).
struct Rendered {
    _dir: tempfile::TempDir,
    node: PathBuf,
    controller: PathBuf,
    base: PathBuf,
    ca: Ca,
}

fn render_for_check() -> Rendered {
    let (helm, _) = helms().remove(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("signing key");
    let values = serde_json::json!({
        "cluster": "prod-eu",
        "node": {
            "routes": [
                {"path": "/echo", "echo": true},
                {"path": "/app", "upstream": "wss://app.backend.svc:8443/ws", "upstreamCaSecret": "app-ca", "allowBinary": false,
                 "schema": {"type": "object", "required": ["type"]}}
            ],
            "labels": {"zone": "eu-west-1a"}
        },
        "etcd": {"endpoints": ["https://etcd-0.db.svc:2379"], "tls": {"enabled": true, "clientAuth": true}},
        "policy": {"document": {
            "origins": {"allow": ["https://app.example.com"]},
            "auth": {"carriers": ["header", "ticket"], "issuer": "https://auth.example.com", "audience": ["palisade"],
                     "keys": [{"kid": "2026-11", "alg": "ES256", "public_key_pem": signing.public_key_pem()}]},
            "limits": {"max_connections": 50000}
        }}
    });
    let values_file = dir.path().join("values.json");
    std::fs::write(&values_file, values.to_string()).expect("values");
    let docs = documents(&rendered(&helm, &[&values_file]));
    let base = dir.path().join("root");
    let fix = |s: &str| s.replace("/etc/palisade/", &format!("{}/etc/palisade/", base.display()));
    let data = |kind: &str, name: &str, key: &str| -> String {
        find(&docs, kind, name)["data"][key].as_str().unwrap_or_else(|| panic!("{kind} {name} has no {key}")).to_owned()
    };
    let write = |rel: &str, contents: &str| {
        let p = base.join("etc/palisade").join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, contents).expect("write");
        p
    };
    let node = write("config/node.toml", &fix(&data("ConfigMap", "edge-palisade-node", "node.toml")));
    write("config/route-1.schema.json", &data("ConfigMap", "edge-palisade-node", "route-1.schema.json"));
    let controller = write("config/controller.toml", &fix(&data("ConfigMap", "edge-palisade-controller", "controller.toml")));
    write("policy/policy.yaml", &data("ConfigMap", "edge-palisade-policy", "policy.yaml"));

    // What the chart mounts: Secret keys tls.crt, tls.key, ca.crt at these directories.
    let ca = new_ca();
    let (c, k) = leaf(&ca, &["ws.example.com"], &[], None);
    write("wss/tls.crt", &c);
    write("wss/tls.key", &k);
    let (c, k) = leaf(&ca, &["edge-palisade-node-control"], &["spiffe://palisade/prod-eu/node/any"], None);
    write("control/tls.crt", &c);
    write("control/tls.key", &k);
    write("control/ca.crt", &ca.pem);
    let (c, k) = leaf(&ca, &["edge-palisade-controller"], &["spiffe://palisade/prod-eu/controller"], None);
    write("controller/tls.crt", &c);
    write("controller/tls.key", &k);
    write("controller/ca.crt", &ca.pem);
    let (c, k) = leaf(&ca, &[], &[], None);
    write("etcd/tls.crt", &c);
    write("etcd/tls.key", &k);
    write("etcd/ca.crt", &ca.pem);
    write("upstream/1/ca.crt", &ca.pem);
    Rendered { _dir: dir, node, controller, base, ca }
}

fn check(component: &str, config: &Path) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args([component, "--config"]).arg(config).arg("--check-config");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PALISADE_") || k.starts_with("OTEL_")) {
        cmd.env_remove(k);
    }
    run(&mut cmd)
}

#[test]
fn rendered_node_and_controller_configs_pass_check_config() {
    let r = render_for_check();
    let toml = std::fs::read_to_string(&r.node).expect("node.toml");
    for needle in ["upstream_ca = ", "schema = ", "[etcd.labels]", "ca = ", "allow_binary = false"] {
        assert!(toml.contains(needle), "the rendered node.toml has `{needle}`:\n{toml}");
    }
    for (component, config) in [("node", &r.node), ("controller", &r.controller)] {
        let out = check(component, config);
        assert!(out.status.success(), "palisade {component} --check-config refused the chart's configuration:\n{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "", "{component}: no warnings with role URIs and long-lived certificates");
    }
}

#[test]
fn check_config_names_the_field_of_a_bad_file() {
    let r = render_for_check();
    let toml = std::fs::read_to_string(&r.node).expect("node.toml");
    let etc = r.base.join("etc/palisade");

    // A missing certificate file: exit 1, the field and the path in the message.
    let missing = r.base.join("nowhere/wss.pem");
    let bad = r.base.join("missing.toml");
    std::fs::write(&bad, toml.replace(&format!("{}/wss/tls.crt", etc.display()), &missing.display().to_string())).expect("write");
    let out = check("node", &bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("tls.cert: cannot read {}", missing.display())), "names tls.cert and the path: {err}");
    assert!(out.stdout.is_empty(), "no `ok`");

    // A key that is not the certificate's.
    let other = r.base.join("other-key.pem");
    std::fs::write(&other, leaf(&r.ca, &[], &[], None).1).expect("write");
    std::fs::write(&bad, toml.replace(&format!("{}/control/tls.key", etc.display()), &other.display().to_string())).expect("write");
    let out = check("node", &bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("control.key:"), "{}", text(&out));

    // An invalid bootstrap policy names policy_file and the policy's own field.
    let policy = r.base.join("bad-policy.yaml");
    std::fs::write(&policy, "auth:\n  carriers: []\n").expect("write");
    std::fs::write(&bad, toml.replace(&format!("{}/policy/policy.yaml", etc.display()), &policy.display().to_string())).expect("write");
    let out = check("node", &bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy_file:") && err.contains("auth.carriers"), "{err}");

    // An etcd password file that is missing, then empty: read as the start reads it.
    let pw = r.base.join("etcd.password");
    let with_user = toml.replacen("[etcd]\n", &format!("[etcd]\nusername = \"palisade-node\"\npassword_file = \"{}\"\n", pw.display()), 1);
    assert_ne!(with_user, toml, "the rendered node.toml has an [etcd] table");
    std::fs::write(&bad, &with_user).expect("write");
    let out = check("node", &bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcd.password_file:"), "{}", text(&out));
    std::fs::write(&pw, "\n").expect("write");
    let out = check("node", &bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the password file is empty"), "{}", text(&out));
    std::fs::write(&pw, "s3cret-etcd-password\n").expect("write");
    let out = check("node", &bad);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("s3cret-etcd-password"), "the password is never printed");

    // A CA file that holds no certificate.
    std::fs::write(etc.join("etcd/ca.crt"), "not a certificate\n").expect("write");
    let out = check("controller", &r.controller);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcd.ca:"), "{}", text(&out));
}

#[test]
fn check_config_warns_of_a_certificate_that_expires_soon() {
    let r = render_for_check();
    let etc = r.base.join("etc/palisade");
    let (c, k) = leaf(&r.ca, &["ws.example.com"], &[], Some(3));
    std::fs::write(etc.join("wss/tls.crt"), c).expect("write");
    std::fs::write(etc.join("wss/tls.key"), k).expect("write");
    let out = check("node", &r.node);
    assert!(out.status.success(), "a warning, not a failure:\n{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: tls.cert:") && err.contains("expires in"), "{err}");
}

#[test]
fn hadolint_reports_nothing_on_the_dockerfile() {
    let hadolint = tool("hadolint");
    let out = run(Command::new(hadolint).arg(root().join("Dockerfile")));
    assert!(out.status.success() && text(&out).trim().is_empty(), "hadolint Dockerfile:\n{}", text(&out));
}
