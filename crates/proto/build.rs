//! Compiles `proto/palisade/**.proto` (at the workspace root) into tonic/prost code and
//! writes the file descriptor set that the reflection services register.

use std::path::PathBuf;

const PROTOS: &[&str] = &["palisade/policy/v1/policy.proto", "palisade/node/v1/node.proto", "palisade/controller/v1/controller.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("palisade_descriptor.bin"))
        .compile_protos(&files, &[proto_root])?;
    Ok(())
}
