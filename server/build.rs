//! Records the commit `ledgerd --version` and `ledgerctl --version` name.

use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .map(|text| text.trim().to_owned())
    };
    // A build without the repository (a container's, say) is told the commit.
    println!("cargo:rerun-if-env-changed=LEDGER_COMMIT");
    let commit = std::env::var("LEDGER_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LEDGER_COMMIT={commit}");
    // A new commit or checkout moves HEAD or the branch it names.
    // (A path that does not exist would rerun this at every build.)
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for path in ["HEAD", "refs/heads", "packed-refs"] {
            let path = format!("{dir}/{path}");
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
