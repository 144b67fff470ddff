//! Policy and keys: get, apply (with the access-rule route warning), diff, status of keys.

#[allow(unused_imports)]
use super::*;

fn read_policy_file(file: &PathBuf) -> anyhow::Result<palisade_policy::Policy> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc = palisade_policy::Policy::from_yaml_or_json(&text)?;
    doc.compile(1)?; // validate locally first: the error names the field
    Ok(doc)
}

pub async fn policy(c: &Conn, cmd: PolicyCommand) -> anyhow::Result<()> {
    let mut client = client(c).await?;
    match cmd {
        PolicyCommand::Get => {
            let v = client.get_policy(pb::GetPolicyRequest {}).await.map_err(rpc_err)?.into_inner().policy.context("empty answer")?;
            let doc = wire::document(&v)?;
            match c.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&json!({"version": v.version, "policy": doc}))?),
                Output::Table => print!("# version {}\n{}", v.version, doc.to_yaml()),
            }
            Ok(())
        }
        PolicyCommand::Apply { file, dry_run } => {
            let doc = read_policy_file(&file)?;
            // Routes are node configuration: a rule for a route no node serves is allowed,
            // but probably a typo.
            if !doc.access.is_empty()
                && let Ok(nodes) = client.list_nodes(pb::ListNodesRequest {}).await
            {
                let nodes = nodes.into_inner().nodes;
                let served: std::collections::HashSet<&str> = nodes.iter().flat_map(|n| n.routes.iter().map(String::as_str)).collect();
                for (i, r) in doc.access.iter().enumerate() {
                    if !nodes.is_empty() && !served.contains(r.route.as_str()) {
                        eprintln!("warning: access[{i}].route: no registered node serves `{}`", r.route);
                    }
                }
            }
            let r = client
                .apply_policy(pb::ApplyPolicyRequest { policy: Some(wire::versioned(0, &doc)), dry_run, expected_version: None })
                .await
                .map_err(rpc_err)?
                .into_inner();
            report(c.output, if dry_run { "dry run" } else { "policy applied" }, r.version, &r.results, r.converged)
        }
        PolicyCommand::Status => {
            let r = client.get_policy_status(pb::GetPolicyStatusRequest {}).await.map_err(rpc_err)?.into_inner();
            let since = |ms: u64| if ms == 0 { String::new() } else { rfc3339_ms(ms) };
            let v = json!({
                "fleet_version": r.fleet_version,
                "converged": r.converged,
                "nodes": r.nodes.iter().map(|n| json!({"node": n.node_id, "version": n.version, "state": n.state, "since": since(n.since_unix_ms)})).collect::<Vec<_>>(),
            });
            print(c.output, &v, || {
                let rows: Vec<Vec<String>> = r
                    .nodes
                    .iter()
                    .map(|n| vec![n.node_id.clone(), n.version.to_string(), n.state.clone(), since(n.since_unix_ms)])
                    .collect();
                format!("fleet version {}\n{}", r.fleet_version, table(&["NODE", "VERSION", "STATE", "SINCE"], &rows))
            });
            if !r.converged {
                bail!("the fleet has not converged on version {}", r.fleet_version);
            }
            Ok(())
        }
        PolicyCommand::Diff { file } => {
            let new = read_policy_file(&file)?;
            let cur = match client.get_policy(pb::GetPolicyRequest {}).await {
                Ok(r) => r.into_inner().policy.map(|v| wire::document(&v)).transpose()?,
                Err(s) if s.code() == tonic::Code::NotFound => None,
                Err(s) => return Err(rpc_err(s)),
            };
            let old_text = cur.map(|p| p.to_yaml()).unwrap_or_default();
            let lines = diff_lines(&old_text, &new.to_yaml());
            match c.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"changed": lines.iter().any(|l| !l.starts_with(' ')), "diff": lines}))?
                ),
                Output::Table => {
                    for l in lines.iter().filter(|l| !l.starts_with(' ')) {
                        println!("{l}");
                    }
                }
            }
            Ok(())
        }
    }
}

/// A line diff (longest common subsequence): `-` removed, `+` added, ` ` kept.
pub fn diff_lines(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+{}", b[j]));
            j += 1;
        } else {
            out.push(format!("-{}", a[i]));
            i += 1;
        }
    }
    out
}

pub async fn keys(c: &Conn, cmd: KeysCommand) -> anyhow::Result<()> {
    let mut client = client(c).await?;
    match cmd {
        KeysCommand::List => {
            let v = client.get_policy(pb::GetPolicyRequest {}).await.map_err(rpc_err)?.into_inner().policy.context("empty answer")?;
            let doc = wire::document(&v)?;
            let keys: Vec<Value> = doc
                .auth
                .keys
                .iter()
                .map(|k| json!({"kid": k.kid, "alg": k.alg, "type": if k.secret_base64.is_some() { "secret" } else { "public key" }}))
                .collect();
            print(c.output, &json!({"version": v.version, "keys": keys, "jwks_url": doc.auth.jwks_url}), || {
                let rows: Vec<Vec<String>> = doc
                    .auth
                    .keys
                    .iter()
                    .map(|k| vec![k.kid.clone(), k.alg.clone(), if k.secret_base64.is_some() { "secret" } else { "public key" }.into()])
                    .collect();
                table(&["KID", "ALG", "TYPE"], &rows)
            });
            Ok(())
        }
        KeysCommand::Add { kid, alg, public_key, secret_base64 } => {
            let public_key_pem = match public_key {
                Some(p) if p.contains("-----BEGIN") => Some(p),
                Some(p) => Some(std::fs::read_to_string(&p).with_context(|| format!("--public-key: cannot read {p}"))?),
                None => None,
            };
            if public_key_pem.is_none() && secret_base64.is_none() {
                bail!("give --public-key (asymmetric algorithms) or --secret-base64 (HMAC)");
            }
            let r = client
                .add_key(pb::AddKeyRequest { kid: kid.clone(), alg, public_key_pem, secret_base64 })
                .await
                .map_err(rpc_err)?
                .into_inner();
            report(c.output, &format!("key {kid} added"), r.version, &r.results, r.converged)
        }
        KeysCommand::Retire { kid } => {
            let r = client.retire_key(pb::RetireKeyRequest { kid: kid.clone() }).await.map_err(rpc_err)?.into_inner();
            report(c.output, &format!("key {kid} retired"), r.version, &r.results, r.converged)
        }
    }
}
