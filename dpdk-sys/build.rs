//! Finds DPDK (>= 22.11) with pkg-config, compiles the C shim with DPDK's C flags and
//! generates the Rust bindings with bindgen. Links DPDK dynamically.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const MIN_VERSION: &str = "22.11";
const INSTALL_HINT: &str = "install the Debian packages: \
     apt-get install dpdk-dev libdpdk-dev pkg-config clang libclang-dev";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/shim.c");
    println!("cargo:rerun-if-changed=csrc/shim.h");
    println!("cargo:rerun-if-changed=csrc/wrapper.h");

    // Emits the -L/-l link flags (shared libraries; the PMDs are loaded by EAL as plugins).
    let lib = match pkg_config::Config::new().atleast_version(MIN_VERSION).probe("libdpdk") {
        Ok(lib) => lib,
        Err(e) => fail(&format!("libdpdk >= {MIN_VERSION} not found by pkg-config: {e}")),
    };

    let cflags = dpdk_cflags();

    let mut shim = cc::Build::new();
    shim.file("csrc/shim.c").include("csrc").warnings(true);
    for flag in &cflags {
        shim.flag(flag);
    }
    shim.compile("msgr_dpdk_shim");

    let builder = bindgen::Builder::default()
        .header("csrc/wrapper.h")
        .clang_arg("-Icsrc")
        .clang_args(&cflags)
        .allowlist_function("rte_.*|msgr_dpdk_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*")
        // Packed structs that rustc rejects (E0588: packed containing a repr(align) type;
        // E0277: packed bitfield struct without Debug). Both come in through rte_flow.h.
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_gtp_psc_generic_hdr")
        .layout_tests(false)
        .derive_default(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    // bindgen panics (instead of returning an error) when it cannot load libclang.
    let generated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.generate()));
    let bindings = match generated {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!("bindgen failed on the DPDK {} headers: {e}", lib.version)),
        Err(_) => fail("bindgen panicked (is libclang installed?)"),
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("bindings.rs");
    if let Err(e) = bindings.write_to_file(&out) {
        fail(&format!("cannot write {}: {e}", out.display()));
    }
}

/// `pkg-config --cflags libdpdk`, split into arguments (include paths, `-include
/// rte_config.h`, `-march=...`); used for both the shim and bindgen's clang.
fn dpdk_cflags() -> Vec<String> {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_owned());
    let output = match Command::new(&pkg_config).args(["--cflags", "libdpdk"]).output() {
        Ok(o) => o,
        Err(e) => fail(&format!("cannot run `{pkg_config} --cflags libdpdk`: {e}")),
    };
    if !output.status.success() {
        fail(&format!(
            "`{pkg_config} --cflags libdpdk` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect()
}

fn fail(msg: &str) -> ! {
    panic!("msgr-dpdk-sys: {msg}; {INSTALL_HINT}");
}
