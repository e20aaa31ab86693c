//! Names the git revision natterd is built from (`NATTER_GIT_REV`), for
//! `natterd --version`. Builds without git too (a tarball): the revision is
//! then `unknown`, unless `NATTER_GIT_REV` is set in the build's environment.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=NATTER_GIT_REV");
    let revision = std::env::var("NATTER_GIT_REV")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: HEAD itself and the branch it points at.
            for path in [
                Some("HEAD".to_owned()),
                git(&["symbolic-ref", "-q", "HEAD"]),
            ]
            .into_iter()
            .flatten()
            {
                if let Some(file) =
                    git(&["rev-parse", "--path-format=absolute", "--git-path", &path])
                {
                    println!("cargo:rerun-if-changed={file}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=NATTER_GIT_REV={revision}");
}
