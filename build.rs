//! Compiles every `.proto` under `proto/` into Rust (messages with prost,
//! clients and servers with tonic) and writes the file descriptor set that
//! server reflection serves. protoc comes from the `protoc-bin-vendored`
//! crate, so a fresh machine needs no system protoc.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // At run time, not `env!`: a build script reused for a copy of the tree
    // elsewhere (one target directory, two checkouts) reads that copy.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let mut protos = Vec::new();
    collect_protos(&root, &mut protos)?;
    protos.sort();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("agora_descriptor.bin"))
        .compile_with_config(config, &protos, &[root.clone(), protoc_bin_vendored::include_path()?])?;

    println!("cargo:rerun-if-changed={}", root.display());
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
