//! `palisade-bench fleet-sim`: many real nodes in one process, for the scale bar (a
//! thousand node processes do not fit a small machine). Each is a `palisade_node::Node`
//! from a configuration template (`{i}` replaced by its index): its own WSS and mTLS
//! control listeners on free ports, its own etcd client, registration under a lease and
//! policy watch, exactly as a node process would run them.

use std::path::PathBuf;

use anyhow::Context as _;

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// How many nodes.
    #[arg(long)]
    pub nodes: usize,
    /// A node.toml with `{i}` where the node's index goes (its id).
    #[arg(long)]
    pub template: PathBuf,
    /// Written once every node is serving.
    #[arg(long)]
    pub ready_file: PathBuf,
}

pub async fn run(a: SimArgs) -> anyhow::Result<()> {
    let template = std::fs::read_to_string(&a.template).with_context(|| format!("cannot read {}", a.template.display()))?;
    let mut handles = Vec::with_capacity(a.nodes);
    for i in 0..a.nodes {
        let text = template.replace("{i}", &format!("{i:04}"));
        let cfg = palisade_node::config::NodeConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("node {i}: {e}"))?;
        let node = palisade_node::Node::bind(cfg).await.map_err(|e| anyhow::anyhow!("node {i}: {e}"))?;
        handles.push(node.spawn().await);
    }
    std::fs::write(&a.ready_file, format!("{}\n", handles.len()))?;
    println!("fleet-sim: {} nodes serving", handles.len());
    // Serve until killed.
    std::future::pending::<()>().await;
    Ok(())
}
