#![forbid(unsafe_code)]

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    // One crypto provider for the whole process: aws-lc-rs (two providers would panic).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // clap exits with 2 on usage errors.
    let cli = palisade::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = rt.block_on(palisade::cli::run(cli));
    // Log lines are written in batches: the last ones go out before the process ends.
    palisade_plane::telemetry::logs::flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
