//! What the cluster commands share: kubectl-style connection flags and kubeconfig resolution,
//! `KIND/NAME` arguments, reading an object and its history, and turning API failures into one
//! clear line.

use std::fmt;
use std::path::PathBuf;

use anyhow::anyhow;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource as _};
use serde_json::Value;

use crate::crd::{ConfigStatus, PoolBudget, RuntimeConfig, Snapshot};
use crate::kinds::ConfigResource;

/// The field manager of the CLI's own writes (the rollback annotation, `import`'s applies).
pub const CLI_MANAGER: &str = "hotconf-cli";
/// The field manager of `reset --apply` (history names it as the author of the reset; apart from
/// `import`'s applies, so that an import after a reset meets a conflict it can explain).
pub const RESET_MANAGER: &str = "hotconf-reset";

/// How to reach the cluster, as kubectl users expect.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, env = "HOTCONF_NAMESPACE")]
    pub namespace: Option<String>,
    /// The kubeconfig context (default: the current context).
    #[arg(long, env = "HOTCONF_CONTEXT")]
    pub context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the in-cluster
    /// service account).
    #[arg(long, env = "HOTCONF_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// A connected client and the namespace to work in.
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The namespace.
    pub namespace: String,
    /// The API server's URL, for messages.
    pub url: String,
}

/// Loads the kubeconfig (or the in-cluster config) and builds a client.
pub async fn connect(args: &ClusterArgs) -> anyhow::Result<Cluster> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let loaded = if args.kubeconfig.is_some() || args.context.is_some() {
        let (kubeconfig, shown) = match &args.kubeconfig {
            Some(path) => (Kubeconfig::read_from(path), path.display().to_string()),
            None => (
                Kubeconfig::read(),
                "from $KUBECONFIG or ~/.kube/config".to_string(),
            ),
        };
        let kubeconfig =
            kubeconfig.map_err(|e| anyhow!("cannot load the kubeconfig {shown}: {}", chain(&e)))?;
        if let Some(context) = &args.context
            && !kubeconfig.contexts.iter().any(|c| &c.name == context)
        {
            let known: Vec<&str> = kubeconfig
                .contexts
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            return Err(anyhow!(
                "context {context:?} is not in the kubeconfig {shown} (it has: {})",
                known.join(", ")
            ));
        }
        Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| anyhow!("cannot use the kubeconfig {shown}: {}", chain(&e)))?
    } else {
        Config::infer().await.map_err(|e| {
            anyhow!(
                "no kubeconfig and no in-cluster service account: {}",
                chain(&e)
            )
        })?
    };
    let url = loaded.cluster_url.to_string();
    let url = url.trim_end_matches('/').to_string();
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| loaded.default_namespace.clone());
    let client = Client::try_from(loaded)
        .map_err(|e| anyhow!("cannot build a client for {url}: {}", chain(&e)))?;
    Ok(Cluster {
        client,
        namespace,
        url,
    })
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The innermost cause of an error (for "connection refused" rather than a wrapper's name).
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// A hotconf kind, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `rtc`, `runtimeconfig(s)`, `runtimeconfig(s).hotconf.dev`.
    RuntimeConfig,
    /// `pb`, `poolbudget(s)`, `poolbudget(s).hotconf.dev`.
    PoolBudget,
}

impl Kind {
    /// The lowercase singular, as kubectl prints it (`runtimeconfig`).
    pub fn noun(self) -> &'static str {
        match self {
            Kind::RuntimeConfig => "runtimeconfig",
            Kind::PoolBudget => "poolbudget",
        }
    }

    /// The short name (`rtc`).
    pub fn short(self) -> &'static str {
        match self {
            Kind::RuntimeConfig => "rtc",
            Kind::PoolBudget => "pb",
        }
    }
}

/// A `KIND/NAME` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// The object's name.
    pub name: String,
}

impl std::str::FromStr for ObjectRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((kind, name)) = text.split_once('/') else {
            return Err(format!(
                "expected KIND/NAME such as rtc/{text} or pb/{text}"
            ));
        };
        if name.is_empty() || name.contains('/') {
            return Err(format!("expected KIND/NAME, got {text:?}"));
        }
        let lower = kind.to_ascii_lowercase();
        // kubectl's forms: resource, resource.group, resource.version.group.
        let resource = lower
            .strip_suffix(".v1alpha1.hotconf.dev")
            .or_else(|| lower.strip_suffix(".hotconf.dev"))
            .unwrap_or(&lower);
        let kind = match resource {
            "rtc" | "runtimeconfig" | "runtimeconfigs" => Kind::RuntimeConfig,
            "pb" | "poolbudget" | "poolbudgets" => Kind::PoolBudget,
            _ => {
                return Err(format!(
                    "{lower} is not a hotconf kind; use rtc/NAME or pb/NAME"
                ));
            }
        };
        Ok(ObjectRef {
            kind,
            name: name.to_string(),
        })
    }
}

/// A hotconf object read from the cluster.
#[derive(Clone, Debug)]
pub enum Object {
    /// A RuntimeConfig.
    RuntimeConfig(Box<RuntimeConfig>),
    /// A PoolBudget.
    PoolBudget(Box<PoolBudget>),
}

impl Object {
    /// Its metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::RuntimeConfig(o) => o.meta(),
            Object::PoolBudget(o) => o.meta(),
        }
    }

    /// Its status (empty when the operator has not written one yet).
    pub fn status(&self) -> ConfigStatus {
        match self {
            Object::RuntimeConfig(o) => o.status.clone(),
            Object::PoolBudget(o) => o.status.clone(),
        }
        .unwrap_or_default()
    }
}

/// An object of the cluster: where it is and how it is called in messages.
pub struct Target<'a> {
    /// The connection.
    pub cluster: &'a Cluster,
    /// The object.
    pub object: ObjectRef,
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.object.kind.noun(),
            self.cluster.namespace,
            self.object.name
        )
    }
}

impl Target<'_> {
    /// Reads the object.
    pub async fn get(&self) -> anyhow::Result<Object> {
        Ok(match self.object.kind {
            Kind::RuntimeConfig => Object::RuntimeConfig(Box::new(self.get_as().await?)),
            Kind::PoolBudget => Object::PoolBudget(Box::new(self.get_as().await?)),
        })
    }

    async fn get_as<K: ConfigResource>(&self) -> anyhow::Result<K> {
        self.api::<K>()
            .get(&self.object.name)
            .await
            .map_err(|e| self.error(e))
    }

    fn api<K: ConfigResource>(&self) -> Api<K> {
        Api::namespaced(self.cluster.client.clone(), &self.cluster.namespace)
    }

    /// Merge-patches the object as field manager `hotconf-cli`.
    pub async fn patch(&self, value: &Value) -> anyhow::Result<()> {
        self.patch_as(CLI_MANAGER, value).await
    }

    /// Merge-patches the object as field manager `manager`.
    pub async fn patch_as(&self, manager: &str, value: &Value) -> anyhow::Result<()> {
        let params = PatchParams {
            field_manager: Some(manager.to_string()),
            ..Default::default()
        };
        let patch = Patch::Merge(value);
        match self.object.kind {
            Kind::RuntimeConfig => self
                .api::<RuntimeConfig>()
                .patch(&self.object.name, &params, &patch)
                .await
                .map(drop),
            Kind::PoolBudget => self
                .api::<PoolBudget>()
                .patch(&self.object.name, &params, &patch)
                .await
                .map(drop),
        }
        .map_err(|e| self.error(e))
    }

    /// One clear line for a failed API call about this object.
    pub fn error(&self, e: kube::Error) -> anyhow::Error {
        match e {
            kube::Error::Api(status) if status.code == 404 => {
                let names_object = status
                    .details
                    .as_ref()
                    .is_some_and(|d| d.name == self.object.name);
                if names_object {
                    anyhow!("{self} not found")
                } else {
                    anyhow!(
                        "the cluster at {} does not serve {}s.hotconf.dev: the hotconf CRDs are \
                         not installed (run `hotconf crds | kubectl apply --server-side -f -`)",
                        self.cluster.url,
                        self.object.kind.noun()
                    )
                }
            }
            kube::Error::Api(status) => {
                let message = if status.message.is_empty() {
                    status.reason.clone()
                } else {
                    status.message.clone()
                };
                anyhow!(
                    "the API server at {} refused the request for {self}: {message}",
                    self.cluster.url
                )
            }
            e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => anyhow!(
                "cannot reach the cluster at {}: {}",
                self.cluster.url,
                root_cause(&e)
            ),
            e => anyhow!(
                "talking to the cluster at {} about {self}: {}",
                self.cluster.url,
                chain(&e)
            ),
        }
    }
}

/// A revision argument: a number, or `current`, `latest`, `previous`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionArg {
    /// A revision number.
    Number(i64),
    /// `.status.currentRevision` (what is projected, a pinned rollback included).
    Current,
    /// `.status.latestRevision` (the spec's newest).
    Latest,
    /// The newest revision before the latest one.
    Previous,
}

impl std::str::FromStr for RevisionArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "current" => Ok(RevisionArg::Current),
            "latest" => Ok(RevisionArg::Latest),
            "previous" => Ok(RevisionArg::Previous),
            other => match other.parse::<i64>() {
                Ok(n) if n > 0 => Ok(RevisionArg::Number(n)),
                _ => Err(format!(
                    "expected a revision number, current, latest or previous; got {text:?}"
                )),
            },
        }
    }
}

impl fmt::Display for RevisionArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevisionArg::Number(n) => write!(f, "{n}"),
            RevisionArg::Current => f.write_str("current"),
            RevisionArg::Latest => f.write_str("latest"),
            RevisionArg::Previous => f.write_str("previous"),
        }
    }
}

/// The revisions in history, oldest first, as text (`3, 4, 5`, or `none`).
pub fn available(status: &ConfigStatus) -> String {
    let mut revisions: Vec<i64> = status.history.iter().map(|s| s.revision).collect();
    revisions.sort_unstable();
    if revisions.is_empty() {
        return "none".to_string();
    }
    revisions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds the snapshot a revision argument names in the object's history.
pub fn find_snapshot<'s>(
    status: &'s ConfigStatus,
    wanted: RevisionArg,
    shown: &impl fmt::Display,
) -> anyhow::Result<&'s Snapshot> {
    let number = match wanted {
        RevisionArg::Number(n) => Some(n),
        RevisionArg::Current => status.current_revision,
        RevisionArg::Latest => status.latest_revision,
        RevisionArg::Previous => status
            .history
            .iter()
            .map(|s| s.revision)
            .filter(|r| status.latest_revision.is_some_and(|l| *r < l))
            .max(),
    };
    let Some(number) = number else {
        return Err(anyhow!(
            "{shown} has no {wanted} revision; available: {}",
            available(status)
        ));
    };
    status
        .history
        .iter()
        .find(|s| s.revision == number)
        .ok_or_else(|| {
            anyhow!(
                "revision {number} is not in the history of {shown}; available: {}",
                available(status)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ObjectRef, String> {
        text.parse()
    }

    #[test]
    fn kinds_are_accepted_in_kubectl_forms() {
        for form in [
            "rtc",
            "RTC",
            "runtimeconfig",
            "RuntimeConfigs",
            "runtimeconfig.hotconf.dev",
            "runtimeconfigs.v1alpha1.hotconf.dev",
        ] {
            let r = parse(&format!("{form}/x")).unwrap();
            assert_eq!(r.kind, Kind::RuntimeConfig, "{form}");
            assert_eq!(r.name, "x");
        }
        for form in ["pb", "PoolBudget", "poolbudgets.hotconf.dev"] {
            assert_eq!(parse(&format!("{form}/x")).unwrap().kind, Kind::PoolBudget);
        }
    }

    #[test]
    fn other_kinds_and_shapes_are_refused_clearly() {
        assert_eq!(
            parse("deployment/web").unwrap_err(),
            "deployment is not a hotconf kind; use rtc/NAME or pb/NAME"
        );
        assert_eq!(
            parse("rc/web").unwrap_err(),
            "rc is not a hotconf kind; use rtc/NAME or pb/NAME"
        );
        assert!(parse("web").unwrap_err().contains("KIND/NAME"));
        assert!(parse("rtc/").is_err());
    }

    #[test]
    fn revisions_resolve_against_history() {
        let snap = |revision| Snapshot {
            revision,
            ..Default::default()
        };
        let status = ConfigStatus {
            history: vec![snap(3), snap(4), snap(5)],
            current_revision: Some(4),
            latest_revision: Some(5),
            ..Default::default()
        };
        let find =
            |w: &str| find_snapshot(&status, w.parse().unwrap(), &"rtc x").map(|s| s.revision);
        assert_eq!(find("4").unwrap(), 4);
        assert_eq!(find("current").unwrap(), 4);
        assert_eq!(find("latest").unwrap(), 5);
        assert_eq!(find("previous").unwrap(), 4);
        assert_eq!(
            find("9").unwrap_err().to_string(),
            "revision 9 is not in the history of rtc x; available: 3, 4, 5"
        );
        assert!("0".parse::<RevisionArg>().is_err());
    }
}
