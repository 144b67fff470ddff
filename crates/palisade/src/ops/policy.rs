//! Policy and keys: get, apply (with the access-rule route warning), diff, status of keys.

#[allow(unused_imports)]
use super::*;

fn read_policy_file(file: &PathBuf) -> anyhow::Result<palisade_policy::Policy> {
    Ok(read_policy_text(file)?.0)
}

/// The document and the version named by its `# version N` header (`policy get`'s).
fn read_policy_text(file: &PathBuf) -> anyhow::Result<(palisade_policy::Policy, Option<u64>)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc = palisade_policy::Policy::from_yaml_or_json(&text)?;
    doc.compile(1)?; // validate locally first: the error names the field
    Ok((doc, version_header(&text)))
}

/// `N` from a first line `# version N`, as `palisade policy get` writes it.
fn version_header(text: &str) -> Option<u64> {
    text.lines().next()?.trim().strip_prefix("# version ")?.trim().parse().ok()
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
        PolicyCommand::Apply { file, dry_run, expected_version, force } => {
            let (doc, header) = read_policy_text(&file)?;
            let expected = if force { None } else { expected_version.or(header) };
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
                .apply_policy(pb::ApplyPolicyRequest { policy: Some(wire::versioned(0, &doc)), dry_run, expected_version: expected })
                .await
                .map_err(|s| match (s.code(), expected) {
                    (tonic::Code::FailedPrecondition, Some(v)) => anyhow::anyhow!(
                        "{}: {} was read at version {v}; `palisade policy diff -f {}` shows what changed since, --force stores it anyway",
                        s.message(),
                        file.display(),
                        file.display()
                    ),
                    _ => rpc_err(s),
                })?
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

#[cfg(test)]
mod tests {
    use super::version_header;

    #[test]
    fn the_version_header_is_policy_gets_first_line_only() {
        assert_eq!(version_header("# version 42\norigins: {}\n"), Some(42));
        assert_eq!(version_header("#  version 7\n"), None, "exactly as policy get writes it");
        assert_eq!(version_header("origins: {}\n# version 42\n"), None, "only the first line");
        assert_eq!(version_header("# version x\n"), None);
        assert_eq!(version_header(""), None);
    }
}
