//! `hotconf dev`: a local control plane with the CRDs and the examples, for someone with no
//! cluster: the operator runs in the foreground. Ctrl-C stops everything.
//!
//! The control plane itself ([`control_plane`], with the aggregated Kubernetes 1.36 CRD server
//! of `crd_server`) is what the integration tests and benchmarks start too; [`manifests`]
//! applies files of any kind, as `kubectl apply` would; [`sim`] stands in for the kubelet and
//! the scheduler, so workloads get live pods (with real agent processes in their sidecars).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;

mod assets;
#[cfg(any(test, feature = "testing"))]
pub mod chaos;
pub mod control_plane;
mod crd_server;
mod crds;
mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fault_proxy;
#[cfg(any(test, feature = "testing"))]
pub mod faults;
pub mod manifests;
mod pki;
mod process;
pub mod sim;
#[cfg(any(test, feature = "testing"))]
mod testing;

pub use crds::install_crds;
pub use error::Error;

use control_plane::{ControlPlane, Options};

/// Arguments of `hotconf dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Working directory for data, certificates, logs and the kubeconfig.
    #[arg(long, env = "HOTCONF_DEV_DIR", default_value = ".dev")]
    pub dir: PathBuf,
    /// CRD files or directories to install.
    #[arg(long, env = "HOTCONF_DEV_CRDS", default_value = "crds")]
    pub crds: Vec<PathBuf>,
    /// Manifests (files or directories) to apply once the control plane is up.
    #[arg(long, env = "HOTCONF_DEV_EXAMPLES", default_value = "examples")]
    pub examples: Vec<PathBuf>,
    /// Directory with etcd, kube-apiserver and kube-controller-manager (default:
    /// $KUBEBUILDER_ASSETS, then the cache filled by hack/control-plane-assets.sh). The
    /// Kubernetes 1.36 CRD server comes from $HOTCONF_CRD_SERVER or hack/crd-server-assets.sh's
    /// cache.
    #[arg(long, env = "KUBEBUILDER_ASSETS")]
    pub assets: Option<PathBuf>,
    /// Do not run the pod simulator (workloads' pods then stay Pending).
    #[arg(long, env = "HOTCONF_DEV_NO_SIMULATOR")]
    pub no_simulator: bool,
    /// The simulator's delay from binding a pod to Running.
    #[arg(long, env = "HOTCONF_DEV_START_DELAY", default_value = "1s", value_parser = duration)]
    pub start_delay: Duration,
    /// The simulator's delay from a ConfigMap change to its volumes' update (the kubelet's is
    /// 60 s and more).
    #[arg(long, env = "HOTCONF_DEV_VOLUME_SYNC_DELAY", default_value = "60s", value_parser = duration)]
    pub volume_sync_delay: Duration,
}

fn duration(text: &str) -> Result<Duration, crate::duration::DurationError> {
    crate::duration::parse(text)
}

/// Starts the control plane under `args.dir`, installs CRDs, applies the examples and waits for
/// Ctrl-C (or SIGTERM).
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let crds: Vec<_> = args.crds.iter().filter(|p| p.exists()).cloned().collect();
    eprintln!(
        "starting etcd, kube-apiserver, the CRD server and kube-controller-manager under {}",
        args.dir.display()
    );
    let plane = ControlPlane::start(Options {
        assets: args.assets.clone(),
        dir: Some(args.dir.clone()),
        log_dir: Some(args.dir.join("logs")),
        crds,
        ..Options::default()
    })
    .await
    .context("starting the local control plane")?;
    let client = plane.client().await?;
    let simulator = if args.no_simulator {
        None
    } else {
        let agent_binary = std::env::current_exe().ok();
        let simulator = sim::Simulator::start(
            client.clone(),
            sim::SimOptions {
                root: Some(plane.dir().join("sim")),
                start_delay: args.start_delay,
                volume_sync_delay: args.volume_sync_delay,
                agent_binary,
                kubeconfig: Some(plane.kubeconfig_path().to_path_buf()),
                ..sim::SimOptions::default()
            },
        )
        .await
        .context("starting the pod simulator")?;
        eprintln!(
            "pod simulator: node {} runs every pod (agent sidecars as real `hotconf agent` processes; logs in {})",
            simulator.node_name(),
            simulator.root().join("logs").display()
        );
        Some(simulator)
    };
    let examples: Vec<_> = args
        .examples
        .iter()
        .filter(|p| p.exists())
        .cloned()
        .collect();
    for applied in manifests::apply_paths(&client, &examples, "hotconf-dev").await? {
        eprintln!("applied {applied}");
    }
    let serving = match plane.crd_server_url() {
        Some(url) => format!(
            "custom resources on Kubernetes {} semantics (the CRD server at {url}, aggregated), core objects on {}",
            plane.crd_version(),
            plane.kube_version()
        ),
        None => format!("Kubernetes {}", plane.kube_version()),
    };
    let pods = match &simulator {
        Some(_) => {
            "Pods are simulated (no kubelet): the examples' Deployment runs with a live hotconf agent,\nwhich reports on its Pod:\n\n    kubectl get pods -o wide\n    kubectl get pod -l app=lazy-loading -o jsonpath='{.items[*].metadata.annotations.hotconf\\.dev/applied}'\n\n"
        }
        None => "No pod simulator (--no-simulator): workloads' pods stay Pending.\n\n",
    };
    println!(
        "\nThe control plane is up ({}: {serving}) and the operator runs below. In another shell:\n\n    export KUBECONFIG={}\n    kubectl get rtc,pb -A\n\n{pods}Control-plane logs: {}\nCtrl-C stops everything.\n",
        plane.server(),
        plane.kubeconfig_path().display(),
        plane.log_dir().display()
    );
    let mut registry = prometheus_client::registry::Registry::with_prefix("hotconf");
    let election = crate::leader::Election::solo();
    let runtime = crate::controller::Runtime {
        metrics: std::sync::Arc::new(crate::metrics::OperatorMetrics::register(&mut registry)),
        is_leader: election.is_leader.clone(),
        health: Default::default(),
        attribution: Default::default(),
    };
    let operator = crate::controller::run(
        client.clone(),
        crate::controller::Scope::default(),
        runtime,
        crate::shutdown::signal(),
    )
    .await;
    if let Some(simulator) = simulator {
        eprintln!("stopping the pod simulator and its agents");
        simulator.stop().await;
    }
    eprintln!("stopping the control plane");
    drop(plane);
    operator?;
    Ok(ExitCode::SUCCESS)
}
