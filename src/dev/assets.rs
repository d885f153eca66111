//! Where the control-plane binaries come from (the envtest convention: `$KUBEBUILDER_ASSETS`,
//! else the cache `hack/control-plane-assets.sh` fills), and what version a binary is.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The Kubernetes version that `hack/control-plane-assets.sh` builds and caches.
pub const ASSETS_VERSION: &str = "1.20.2";

/// Resolves the directory holding `etcd`, `kube-apiserver` and `kube-controller-manager`.
pub fn asset_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    cache_root()
        .join("control-plane")
        .join(format!("k8s-{ASSETS_VERSION}"))
}

/// The cache the asset scripts fill: `$HOTCONF_CACHE_DIR`, else `$XDG_CACHE_HOME/hotconf`, else
/// `~/.cache/hotconf`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("HOTCONF_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("hotconf")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/hotconf")
        })
}

/// The version a Kubernetes binary reports with `--version` (`Kubernetes v1.20.2` → `1.20.2`).
pub(super) fn binary_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    Some(version.trim().to_string())
}

/// The minor of a `1.N.P` version; 0 when unknown.
pub(super) fn minor(version: &str) -> u32 {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}
