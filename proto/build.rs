//! Compiles `lienthong/v1/lienthong.proto` with the protoc that ships in the
//! `protoc-bin-vendored` crate, so a fresh machine needs nothing but cargo.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let proto = manifest.join("lienthong/v1/lienthong.proto");
    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes(["."]);

    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .file_descriptor_set_path(out.join("lienthong_descriptor.bin"))
        .compile_with_config(
            config,
            &[proto],
            &[manifest.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=lienthong/v1/lienthong.proto");
    Ok(())
}
