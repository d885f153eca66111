//! hotconf agent containers in simulated pods, run as real `hotconf agent` processes: which
//! containers are agents, their environment as the kubelet builds it (literal values, the
//! Downward API's `fieldRef`, `$(VAR)` expansion), and their arguments with container paths
//! rewritten to the pod's simulated volume directories, the admin server on a free loopback
//! port and a localhost reload URL pointed at the simulator's stand-in app.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Container, Pod};

/// Whether `container` runs the hotconf agent: its arguments (after a `hotconf` command, if
/// any) start with `agent`.
pub fn is_agent(container: &Container) -> bool {
    let command = container.command.as_deref().unwrap_or_default();
    let args = container.args.as_deref().unwrap_or_default();
    let words: Vec<&str> = command
        .iter()
        .chain(args)
        .map(String::as_str)
        .skip_while(|w| w.ends_with("hotconf"))
        .collect();
    words.first() == Some(&"agent")
}

/// Expands `$(VAR)` references as the kubelet does: a defined variable is replaced, an
/// undefined one is left as written, and `$$` is an escaped `$`.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match vars(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a Downward API `fieldRef` path for `pod` (with the simulator's pod IP).
pub fn field_ref(pod: &Pod, path: &str, pod_ip: &str, host_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path
            .strip_prefix(prefix)?
            .strip_suffix("']")
            .or_else(|| path.strip_prefix(prefix)?.strip_suffix("\"]"))?;
        map.as_ref()?.get(key).cloned()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec?.node_name.clone(),
        "spec.serviceAccountName" => Some(service_account(pod)),
        "status.podIP" => Some(pod_ip.to_string()),
        "status.hostIP" => Some(host_ip.to_string()),
        p if p.starts_with("metadata.labels[") => keyed(&meta.labels, "metadata.labels['")
            .or_else(|| keyed(&meta.labels, "metadata.labels[\"")),
        p if p.starts_with("metadata.annotations[") => {
            keyed(&meta.annotations, "metadata.annotations['")
                .or_else(|| keyed(&meta.annotations, "metadata.annotations[\""))
        }
        _ => None,
    }
}

/// The pod's ServiceAccount (`default` when none is named).
pub fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .clone()
                .or_else(|| s.service_account.clone())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// The container's environment in order, as the kubelet builds it: literal values (expanded
/// against the variables before them) and `fieldRef`s. Other sources (ConfigMap and Secret
/// keys, resource fields) are not resolved and left out.
pub fn environment(
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
    host_ip: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            let lookup = |name: &str| {
                env.iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            Some(expand(value, &lookup))
        } else {
            var.value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .and_then(|f| field_ref(pod, &f.field_path, pod_ip, host_ip))
        };
        if let Some(value) = value {
            env.retain(|(k, _)| k != &var.name);
            env.push((var.name.clone(), value));
        }
    }
    env
}

/// A container path rewritten to this machine's directory for it: the deepest volume mount
/// (container path → host directory) that holds it. `None` when no mount does.
pub fn rewrite_path(path: &str, mounts: &[(String, PathBuf)]) -> Option<PathBuf> {
    mounts
        .iter()
        .filter_map(|(mount, host)| {
            let mount = mount.trim_end_matches('/');
            let rest = path.strip_prefix(mount)?;
            if rest.is_empty() {
                Some((mount.len(), host.clone()))
            } else {
                let rest = rest.strip_prefix('/')?;
                Some((mount.len(), host.join(rest)))
            }
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

/// A localhost reload URL pointed at the stand-in app: `http://localhost:8080/-/reload` becomes
/// `{app}/-/reload`, where `app` is the app's base URL for this pod. Other URLs stay.
pub fn rewrite_reload_url(url: &str, app: &str) -> String {
    let Some(rest) = url.strip_prefix("http://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    if matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "0.0.0.0") {
        format!("{}{}", app.trim_end_matches('/'), path)
    } else {
        url.to_string()
    }
}

/// How to run one agent container here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCommand {
    /// The arguments after the binary (`agent ...`).
    pub args: Vec<String>,
    /// The environment beyond the simulator's own.
    pub env: Vec<(String, String)>,
}

/// The agent's command line and environment: `$(VAR)` expanded, paths under the container's
/// volume mounts rewritten, `--admin-addr` on `127.0.0.1:admin_port`, and a localhost
/// `--reload-url` sent to `app`.
pub fn agent_command(
    container: &Container,
    env: Vec<(String, String)>,
    mounts: &[(String, PathBuf)],
    admin_port: u16,
    app: &str,
) -> AgentCommand {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let command = container.command.as_deref().unwrap_or_default();
    let words: Vec<String> = command
        .iter()
        .chain(container.args.as_deref().unwrap_or_default())
        .skip_while(|w| w.ends_with("hotconf"))
        .map(|w| expand(w, &lookup))
        .collect();
    let rewrite_value = |value: &str| -> String {
        if value.starts_with('/')
            && let Some(p) = rewrite_path(value, mounts)
        {
            return p.display().to_string();
        }
        value.to_string()
    };
    let mut args = Vec::with_capacity(words.len() + 1);
    let mut pending: Option<String> = None;
    for word in words {
        if let Some(flag) = pending.take() {
            args.push(rewrite_flag_value(
                &flag,
                &word,
                app,
                admin_port,
                &rewrite_value,
            ));
            continue;
        }
        match word.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                let value = rewrite_flag_value(flag, value, app, admin_port, &rewrite_value);
                args.push(format!("{flag}={value}"));
            }
            _ => {
                if word.starts_with("--")
                    && matches!(word.as_str(), "--admin-addr" | "--reload-url")
                {
                    pending = Some(word.clone());
                }
                args.push(rewrite_value(&word));
            }
        }
    }
    if !args.iter().any(|a| a.starts_with("--admin-addr")) {
        args.push(format!("--admin-addr=127.0.0.1:{admin_port}"));
    }
    let env = env
        .into_iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                "HOTCONF_ADMIN_ADDR" => format!("127.0.0.1:{admin_port}"),
                "HOTCONF_RELOAD_URL" => rewrite_reload_url(&v, app),
                _ => rewrite_value(&v),
            };
            (k, v)
        })
        .collect();
    AgentCommand { args, env }
}

fn rewrite_flag_value(
    flag: &str,
    value: &str,
    app: &str,
    admin_port: u16,
    rewrite_value: &dyn Fn(&str) -> String,
) -> String {
    match flag {
        "--admin-addr" if value != "off" => format!("127.0.0.1:{admin_port}"),
        "--reload-url" => rewrite_reload_url(value, app),
        _ => rewrite_value(value),
    }
}

/// The container's volume mounts as (container path, host directory), given each volume's
/// directory by name. `subPath` is honoured.
pub fn mounts(
    container: &Container,
    volume_dirs: &BTreeMap<String, PathBuf>,
) -> Vec<(String, PathBuf)> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let dir = volume_dirs.get(&m.name)?;
            let dir = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => dir.join(sub),
                None => dir.clone(),
            };
            Some((m.mount_path.clone(), dir))
        })
        .collect()
}

/// Writes a kubeconfig at `out` in which the user of the `admin` kubeconfig impersonates
/// `user` with `groups`, so RBAC judges every request as that user's (e.g. a ServiceAccount).
pub fn impersonating_kubeconfig(
    admin: &Path,
    user: &str,
    groups: &[&str],
    out: &Path,
) -> std::io::Result<()> {
    let text = std::fs::read_to_string(admin)?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    for entry in config["users"].as_sequence_mut().into_iter().flatten() {
        let auth = &mut entry["user"];
        auth["as"] = user.into();
        auth["as-groups"] = groups
            .iter()
            .map(|g| serde_yaml::Value::from(*g))
            .collect::<Vec<_>>()
            .into();
    }
    let yaml = serde_yaml::to_string(&config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    // Pods of one ServiceAccount share the file: an agent starting never reads half of it.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(format!(".{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, yaml)?;
    std::fs::rename(&tmp, out)
}

/// The groups a ServiceAccount's token carries.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sidecar() -> Container {
        serde_json::from_value(json!({
            "name": "hotconf-agent",
            "image": "ghcr.io/hotconf/hotconf:latest",
            "args": [
                "agent",
                "--configmap=$(POD_NAMESPACE)/lazy-loading-config",
                "--watch-dir=/etc/hotconf/source",
                "--file=config.yaml",
                "--output=/etc/app/config.yaml",
                "--reload-url=http://localhost:8080/-/reload",
                "--admin-addr=0.0.0.0:9901",
                "--note=$$(POD_NAME) $(UNDEFINED)"
            ],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "GREETING", "value": "hi $(POD_NAME)"}
            ],
            "volumeMounts": [
                {"name": "source", "mountPath": "/etc/hotconf/source"},
                {"name": "app-config", "mountPath": "/etc/app"}
            ]
        }))
        .unwrap()
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [sidecar()]}
        }))
        .unwrap()
    }

    #[test]
    fn expands_as_the_kubelet_does() {
        let vars = |n: &str| (n == "A").then(|| "1".to_string());
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$A $", &vars), "$A $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn recognises_agent_containers() {
        assert!(is_agent(&sidecar()));
        let mut c = sidecar();
        c.command = Some(vec!["/usr/bin/hotconf".into()]);
        assert!(is_agent(&c));
        c.command = Some(vec!["python".into()]);
        assert!(!is_agent(&c));
    }

    #[test]
    fn resolves_the_downward_api() {
        let env = environment(&pod(), &sidecar(), "10.244.0.5", "127.0.0.1");
        assert_eq!(
            env,
            vec![
                ("POD_NAME".into(), "web-1".into()),
                ("POD_NAMESPACE".into(), "shop".into()),
                ("GREETING".into(), "hi web-1".into()),
            ]
        );
        assert_eq!(
            field_ref(&pod(), "metadata.labels['app']", "", ""),
            Some("web".into())
        );
    }

    #[test]
    fn rewrites_paths_under_the_deepest_mount() {
        let mounts = vec![
            ("/etc".to_string(), PathBuf::from("/sim/etc")),
            ("/etc/app/".to_string(), PathBuf::from("/sim/app")),
        ];
        assert_eq!(
            rewrite_path("/etc/app/config.yaml", &mounts),
            Some(PathBuf::from("/sim/app/config.yaml"))
        );
        assert_eq!(
            rewrite_path("/etc/app", &mounts),
            Some(PathBuf::from("/sim/app"))
        );
        assert_eq!(
            rewrite_path("/etc/apple", &mounts),
            Some(PathBuf::from("/sim/etc/apple"))
        );
        assert_eq!(rewrite_path("/var/x", &mounts), None);
    }

    #[test]
    fn rewrites_the_sidecar_of_the_example() {
        let c = sidecar();
        let dirs: BTreeMap<String, PathBuf> = [
            ("source".to_string(), PathBuf::from("/sim/p/source")),
            ("app-config".to_string(), PathBuf::from("/sim/p/app-config")),
        ]
        .into();
        let env = environment(&pod(), &c, "10.244.0.5", "127.0.0.1");
        let cmd = agent_command(
            &c,
            env,
            &mounts(&c, &dirs),
            4242,
            "http://127.0.0.1:7000/pods/shop/web-1",
        );
        assert_eq!(
            cmd.args,
            vec![
                "agent",
                "--configmap=shop/lazy-loading-config",
                "--watch-dir=/sim/p/source",
                "--file=config.yaml",
                "--output=/sim/p/app-config/config.yaml",
                "--reload-url=http://127.0.0.1:7000/pods/shop/web-1/-/reload",
                "--admin-addr=127.0.0.1:4242",
                "--note=$(POD_NAME) $(UNDEFINED)",
            ]
        );
        assert_eq!(
            rewrite_reload_url("http://app.example:8080/r", "http://x"),
            "http://app.example:8080/r"
        );
    }

    #[test]
    fn writes_an_impersonating_kubeconfig() {
        let tmp = tempfile::tempdir().unwrap();
        let admin = tmp.path().join("admin");
        std::fs::write(
            &admin,
            "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user: {token: t}\n",
        )
        .unwrap();
        let out = tmp.path().join("sa");
        impersonating_kubeconfig(&admin, "system:serviceaccount:ns:sa", &["g1"], &out).unwrap();
        let text = std::fs::read_to_string(out).unwrap();
        assert!(text.contains("as: system:serviceaccount:ns:sa"), "{text}");
        assert!(text.contains("- g1"), "{text}");
        assert!(text.contains("token: t"), "{text}");
    }
}
