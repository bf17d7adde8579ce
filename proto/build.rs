//! Generates the prost types, the tonic service, and pbjson's proto3-JSON serde impls.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["sidewall/v1/events.proto", "sidewall/v1/runtime.proto", "sidewall/v1/sensors.proto"];
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = out.join("sidewall_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        // Our own Timestamp: pbjson-types writes "+00:00" where proto3 JSON wants "Z".
        .extern_path(".google.protobuf.Timestamp", "crate::Timestamp")
        .compile_protos(&protos, &["."])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .preserve_proto_field_names()
        .build(&[".sidewall"])?;
    println!("cargo:rerun-if-changed=build.rs");
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
