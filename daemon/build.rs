//! Builds the eBPF programs in `bpf/programs` for `bpfel-unknown-none` with the nightly
//! toolchain and bpf-linker (see scripts/setup.sh), and leaves the object in OUT_DIR for
//! `include_bytes!`. Set SIDEWALL_BPF_OBJECT to use a prebuilt object instead.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let bpf = manifest.join("../bpf");
    let dst = out.join("sidewall.bpf.o");
    println!("cargo:rerun-if-env-changed=SIDEWALL_BPF_OBJECT");
    if let Some(prebuilt) = env::var_os("SIDEWALL_BPF_OBJECT") {
        std::fs::copy(&prebuilt, &dst).expect("copy SIDEWALL_BPF_OBJECT");
        return;
    }
    for dir in ["programs/src", "programs/Cargo.toml", "common/src", "common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", bpf.join(dir).display());
    }
    let target_dir = out.join("bpf-target");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets it");
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--bin", "sidewall"])
        .arg("--manifest-path")
        .arg(bpf.join("programs/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags);
    // The outer build's compiler settings must not leak into the nightly BPF build.
    for key in ["RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "CARGO_TARGET_DIR"] {
        cmd.env_remove(key);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run `rustup run nightly cargo` ({e}); run `make setup` first"));
    if !status.success() {
        panic!(
            "building the eBPF programs failed ({status}); run `make setup` if the nightly rust-src or bpf-linker is missing"
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/sidewall");
    std::fs::copy(&built, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
}
