//! sidewall's eBPF programs. One probe per file under `probes/`; shared kernel reads in
//! `kernel.rs`; maps in `maps.rs`; enforcement maps and checks in `policy.rs`. Kernel struct
//! offsets come from the daemon (`OFFSETS`), resolved from the running kernel's BTF, never
//! hard-coded here.
#![no_std]
#![no_main]

mod cwd;
mod kernel;
mod maps;
mod policy;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach this; it exists only to link.
    loop {}
}

/// eBPF programs that use GPL-only helpers (probe_read_kernel, send_signal) must say GPL.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
