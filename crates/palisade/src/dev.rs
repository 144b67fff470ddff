//! `palisade dev`: the whole fleet on one machine (SPEC sections 2 and 11).

use std::path::PathBuf;

use anyhow::Context as _;
use palisade_node::config::{ControlConfig, Listen, NodeConfig, RouteConfig, TlsConfig, TlsMode};
use palisade_node::{Node, NodeHandle};

pub struct DevOptions {
    pub dir: PathBuf,
    pub nodes: usize,
    pub etcd: Option<String>,
    pub upstream: Option<String>,
}

mod files;
use files::CLUSTER;
pub use files::{DevFiles, bootstrap_policy, ensure_files, node_id};

/// The configuration of dev node `i` (1-based).
pub fn node_config(files: &DevFiles, i: usize, upstream: Option<&str>) -> NodeConfig {
    let id = node_id(i);
    let (control_cert, control_key) = files.node_control(i);
    let mut routes =
        vec![RouteConfig { path: "/echo".into(), echo: true, upstream: None, upstream_ca: None, allow_binary: true, schema: None }];
    if let Some(u) = upstream {
        routes.push(RouteConfig {
            path: "/app".into(),
            echo: false,
            upstream: Some(u.into()),
            upstream_ca: None,
            allow_binary: true,
            schema: None,
        });
    }
    NodeConfig {
        id: Some(id),
        cluster: CLUSTER.into(),
        listen: Listen { wss: ([127, 0, 0, 1], 0).into(), control: Some(([127, 0, 0, 1], 0).into()), data_threads: None },
        tls: TlsConfig {
            mode: TlsMode::Rustls,
            cert: Some(files.wss_cert.clone()),
            key: Some(files.wss_key.clone()),
            reload_interval_ms: 2000,
        },
        trusted_proxies: Vec::new(),
        ipv6_prefix_len: 64,
        routes,
        policy_file: Some(files.policy.clone()),
        drain_deadline_seconds: 5,
        refusal_lane: 64,
        // The node's own control certificate (role `node/dev-node-<i>`); callers must
        // chain to the dev CA and be the controller or an operator.
        control: Some(ControlConfig { cert: control_cert, key: control_key, ca: files.ca.clone() }),
        etcd: None,
        insecure_control_plane: false,
    }
}

pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    // SIGTERM (a supervisor, `kill`, a container stop) drains like Ctrl-C, from before
    // `endpoints.json` says the fleet is up.
    let shutdown = crate::shutdown::listen();
    let fleet = start(&opts).await?;
    print_banner(&opts, &fleet);
    shutdown.wait().await;
    eprintln!("draining...");
    fleet.shutdown().await;
    Ok(())
}

/// A running dev fleet: nodes and the controller, in this process.
pub struct DevFleet {
    pub files: DevFiles,
    pub nodes: Vec<NodeHandle>,
    pub controller: palisade_controller::ControllerHandle,
    pub token: String,
}

impl DevFleet {
    /// Drains every node (sessions get 1001) and stops the controller.
    pub async fn shutdown(self) {
        futures_util::future::join_all(self.nodes.iter().map(|h| h.drain())).await;
        for h in self.nodes {
            h.join().await;
        }
        self.controller.stop();
        self.controller.join().await;
    }
}

pub async fn start(opts: &DevOptions) -> anyhow::Result<DevFleet> {
    if opts.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    let files = ensure_files(&opts.dir, opts.nodes)?;
    let _ = std::fs::remove_file(&files.endpoints);
    let bootstrap = palisade_policy::Policy::from_yaml_or_json(&std::fs::read_to_string(&files.policy)?)
        .with_context(|| format!("{}", files.policy.display()))?;
    bootstrap.compile(1).with_context(|| format!("{}", files.policy.display()))?;

    // etcd, when given: the policy lives there (written once from the bootstrap file).
    let etcd = match &opts.etcd {
        Some(url) => {
            let opts = etcd_client::ConnectOptions::new().with_connect_timeout(std::time::Duration::from_secs(3));
            Some(etcd_client::Client::connect([url.as_str()], Some(opts)).await.with_context(|| format!("cannot reach etcd at {url}"))?)
        }
        None => None,
    };
    let store = match &etcd {
        Some(c) => {
            let store = palisade_controller::store::FleetPolicy::etcd(c.clone(), CLUSTER);
            match store.put(&bootstrap, 0).await {
                Ok(_) => {}
                // A policy left by an earlier run wins, unless it trusts another `dev`
                // key (an earlier --dir): the token printed below would then be refused.
                Err(palisade_controller::store::StoreError::Conflict { .. }) => {
                    let stored = store.get().await.map_err(|e| anyhow::anyhow!("cannot read the policy in etcd: {e}"))?;
                    let dev_pem = |p: &palisade_policy::Policy| {
                        p.auth.keys.iter().find(|k| k.kid == "dev").and_then(|k| k.public_key_pem.as_deref().map(|s| s.trim().to_owned()))
                    };
                    if let Some((p, _)) = &stored
                        && let Some(theirs) = dev_pem(p)
                        && Some(theirs) != dev_pem(&bootstrap)
                    {
                        anyhow::bail!(
                            "the policy in etcd ({}) trusts another `dev` key than {}: it was stored by a dev fleet with another --dir. \
                             Start with that --dir, or delete the key /palisade/{CLUSTER}/policy to start afresh",
                            opts.etcd.as_deref().unwrap_or_default(),
                            files.signing_key.display()
                        );
                    }
                }
                Err(e) => anyhow::bail!("cannot store the bootstrap policy in etcd: {e}"),
            }
            store
        }
        None => palisade_controller::store::FleetPolicy::memory(Some((bootstrap, 1))),
    };

    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 1..=opts.nodes {
        let mut cfg = node_config(&files, i, opts.upstream.as_deref());
        if let Some(url) = &opts.etcd {
            cfg.etcd = Some(palisade_node::config::EtcdConfig::new(vec![url.clone()]));
        }
        nodes.push(Node::bind(cfg).await?.spawn().await);
    }

    // The controller: `controller.pem` (role `controller`; localhost, 127.0.0.1; server and
    // client auth) is both its FleetControl server certificate and its identity towards
    // the nodes.
    let node_tls = palisade_plane::ControlTls::load(&files.controller_cert, &files.controller_key, &files.ca)?;
    let directory = palisade_controller::directory::Directory::new(Some(node_tls.clone()), std::time::Duration::from_secs(5));
    let controller = palisade_controller::Controller::new(CLUSTER.into(), directory.clone(), store, 64);
    if etcd.is_none() {
        controller.add_static(nodes.iter().map(record).collect());
        // Without etcd nothing deregisters a node: one drained (`palisade drain`) leaves
        // the controller's directory when it stops, as it would leave etcd's registry.
        for h in &nodes {
            let (state, directory) = (h.state.clone(), directory.clone());
            tokio::spawn(async move {
                state.stopped().await;
                directory.remove(state.id());
            });
        }
    }
    let tls = node_tls.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let controller = controller.serve(listener, Some(tls), etcd).await;

    let node_list: Vec<serde_json::Value> = nodes
        .iter()
        .map(|h| {
            serde_json::json!({
                "id": h.state.id(),
                "wss": format!("wss://127.0.0.1:{}", h.wss_addr.port()),
                "control": h.control_addr.map(|a| a.to_string()),
            })
        })
        .collect();
    let endpoints = serde_json::json!({"controller": controller.addr.to_string(), "nodes": node_list});
    std::fs::write(&files.endpoints, serde_json::to_string_pretty(&endpoints)?)?;

    let token = crate::token::mint(&crate::token::MintArgs {
        key_text: &std::fs::read_to_string(&files.signing_key)?,
        alg: None,
        kid: Some("dev"),
        sub: "alice",
        ttl_seconds: 3600,
        aud: None,
        iss: None,
        jti: None,
    })?;
    Ok(DevFleet { files, nodes, controller, token })
}

fn record(h: &NodeHandle) -> palisade_plane::NodeRecord {
    palisade_node::cluster::node_record(&h.state, h.wss_addr, h.control_addr)
}

fn print_banner(opts: &DevOptions, fleet: &DevFleet) {
    let files = &fleet.files;
    let dir = opts.dir.display();
    let first = fleet.nodes.first().map(|h| h.wss_addr.port()).unwrap_or(0);
    let registry = if opts.etcd.is_some() { "etcd" } else { "in-process registry" };
    println!("Palisade dev fleet: {} node(s) and a controller ({registry}), files in {dir}", fleet.nodes.len());
    for h in &fleet.nodes {
        println!(
            "  node {:<12} wss://127.0.0.1:{}/echo   control {}",
            h.state.id(),
            h.wss_addr.port(),
            h.control_addr.map(|a| a.to_string()).unwrap_or_default()
        );
    }
    if let Some(u) = &opts.upstream {
        println!("  route /app bridges to {u}");
    }
    println!("  controller        {}", fleet.controller.addr);
    println!();
    println!("Test token (sub=alice, 1 h):");
    println!("{}", fleet.token);
    println!();
    println!("Try it:");
    println!(
        "  echo hello | SSL_CERT_FILE={ca} websocat -n1 'wss://127.0.0.1:{first}/echo' -H 'Authorization: Bearer {token}'",
        ca = files.ca.display(),
        token = fleet.token
    );
    println!("  palisade token mint --key {} --kid dev --sub bob --ttl 15m", files.signing_key.display());
    println!();
    println!("Operator commands:");
    println!(
        "  export PALISADE_CONTROLLER={} PALISADE_CA={} PALISADE_CERT={} PALISADE_KEY={}",
        fleet.controller.addr,
        files.ca.display(),
        files.operator_cert.display(),
        files.operator_key.display()
    );
    println!("  palisade nodes; palisade stats; palisade connections --user alice; palisade disconnect --user alice");
    println!(
        "  grpcurl -cacert {} -cert {} -key {} {} list",
        files.ca.display(),
        files.operator_cert.display(),
        files.operator_key.display(),
        fleet.controller.addr
    );
    println!();
    println!("Endpoints: {}", files.endpoints.display());
    println!("Ctrl-C drains and exits.");
}
