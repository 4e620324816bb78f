//! Compiles the eBPF programs in `bpf/` with clang into `OUT_DIR`, where the
//! crate embeds them with `include_bytes!`. Without a working clang (or without
//! libbpf's headers) the crate still builds, with an empty object and the
//! reason recorded, so machines that never run the datapath need no eBPF
//! toolchain; the agent then refuses to start and says what was missing.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["datapath"];

fn main() {
    println!("cargo:rerun-if-env-changed=TREFOIL_BPF_CLANG");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let clang = env::var("TREFOIL_BPF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    // The kernel's UAPI headers include <asm/types.h>, which Debian keeps under
    // the multiarch directory of the host.
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    for program in PROGRAMS {
        let source = format!("bpf/{program}.c");
        println!("cargo:rerun-if-changed={source}");
        let object = out_dir.join(format!("{program}.o"));
        let reason = out_dir.join(format!("{program}.missing"));
        let result = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-Wno-unused-parameter"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .args(["-c", &source, "-o"])
            .arg(&object)
            .output();
        let failure = match result {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(format!("{clang} could not compile {source}: {}", String::from_utf8_lossy(&output.stderr).trim())),
            Err(error) => Some(format!("{clang} was not found at build time ({error})")),
        };
        match failure {
            None => fs::write(&reason, "").expect("OUT_DIR is writable"),
            Some(why) => {
                println!("cargo:warning=trefoil-datapath built without eBPF programs: {}", why.lines().next().unwrap_or(""));
                fs::write(&object, []).expect("OUT_DIR is writable");
                fs::write(&reason, why).expect("OUT_DIR is writable");
            }
        }
    }
}
