//! `palisade-bench verify`: the CPU of one ES256 token verification in this process,
//! palisade's verifier (`palisade_policy`, what a node runs at step 10) against
//! `jsonwebtoken::decode` (the library alone, no claim rules) and against the verifier's
//! previous path (jsonwebtoken's `decode_header`, a second parse of the header for
//! `crit`, then `decode`), interleaved in rounds over fresh tokens, medians. The
//! handshake bar leaves about 58 µs for everything palisade adds; the P-256 math is most
//! of one verification, so what is around it is what this measures.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::fixture::Fixture;
use crate::report::{JsonLine, Table, median, round};

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Fresh tokens verified per round and verifier.
    #[arg(long, default_value_t = 2000)]
    pub tokens: usize,
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
}

/// This thread's CPU time, in nanoseconds.
fn thread_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok().and_then(|t| t.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

pub fn run(a: VerifyArgs) -> anyhow::Result<()> {
    let f = Fixture::new(false)?;
    let compiled = f.policy_doc.compile(1)?;
    let pem = f.policy_doc.auth.keys.first().and_then(|k| k.public_key_pem.clone()).context("the bench key")?;
    let key = jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let tokens: Vec<String> =
        f.bearer_tokens(a.tokens)?.into_iter().map(|t| t.strip_prefix("Bearer ").unwrap_or_default().to_owned()).collect();
    type Check<'a> = Box<dyn Fn(&str) -> bool + 'a>;
    let verifiers: Vec<(&str, Check)> = vec![
        ("palisade", Box::new(|t: &str| compiled.verifier.verify(t, now).is_ok())),
        ("jsonwebtoken-decode", Box::new(|t: &str| jsonwebtoken::decode::<serde_json::Value>(t, &key, &validation).is_ok())),
        (
            "previous-path",
            Box::new(|t: &str| {
                use base64::Engine as _;
                let Ok(h) = jsonwebtoken::decode_header(t) else { return false };
                let seg = t.split('.').next().unwrap_or_default();
                let crit = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(seg)
                    .ok()
                    .and_then(|j| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&j).ok())
                    .is_none_or(|m| m.contains_key("crit"));
                !crit && h.kid.is_some() && jsonwebtoken::decode::<serde_json::Value>(t, &key, &validation).is_ok()
            }),
        ),
    ];
    let mut us: Vec<Vec<f64>> = vec![Vec::new(); verifiers.len()];
    for r in 0..a.rounds {
        for (i, (name, check)) in crate::scenario::rotated(&verifiers.iter().enumerate().collect::<Vec<_>>(), r) {
            let t0 = thread_ns();
            for t in &tokens {
                anyhow::ensure!(check(t), "{name} refused a bench token");
            }
            us[i].push((thread_ns() - t0) as f64 / 1e3 / tokens.len() as f64);
        }
    }
    let mut t = Table::new(&["verifier", "CPU us / token (median)", "vs palisade"]);
    let base = median(&us[0]);
    let mut out = JsonLine::default();
    out.set("scenario", "verify");
    for ((name, _), xs) in verifiers.iter().zip(&us) {
        let m = median(xs);
        t.row(vec![(*name).into(), format!("{m:.1}"), format!("{:.2}", m / base)]);
        out.set(format!("{name}_us"), round(m, 1));
    }
    t.print();
    out.set("palisade_vs_previous", round(base / median(&us[2]), 3));
    out.set("command", crate::command_line());
    println!("{out}");
    Ok(())
}
