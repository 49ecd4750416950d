//! Link layout of the `warden` binary in release builds (see docs/benchmarks.md, "Memory").
//!
//! A sidecar executes about 3 MB of the binary's 14 MB of machine code, but Linux maps code in
//! 64 KiB fault-around windows, so code spread over the whole `.text` section made 11 MB of it
//! resident. The order file (`build/warden.order`, the functions a sidecar pair executed under
//! callgrind, hottest first) makes lld place that code together at the start of `.text`. Symbols
//! the file names that no longer exist are skipped, so a stale file only costs memory, never
//! correctness. `-z pack-relative-relocs` stores the ~35,000 relative relocations of the
//! position-independent binary as DT_RELR (a few KB instead of 0.8 MB read at every start); it
//! needs glibc 2.36 or later at run time.
//!
//! Only for release builds on x86_64 Linux GNU, where rustc links with its bundled lld; set
//! `WARDEN_LINK_LAYOUT=0` to link without these flags (another linker, an older glibc).

fn main() {
    println!("cargo:rerun-if-changed=build/warden.order");
    println!("cargo:rerun-if-env-changed=WARDEN_LINK_LAYOUT");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let wanted = var("WARDEN_LINK_LAYOUT") != "0"
        && var("PROFILE") == "release"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if !wanted {
        return;
    }
    let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("build/warden.order");
    println!(
        "cargo:rustc-link-arg-bin=warden=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=warden=-Wl,--no-warn-symbol-ordering");
    println!("cargo:rustc-link-arg-bin=warden=-Wl,-z,pack-relative-relocs");
}
