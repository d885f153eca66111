//! Installing CRDs and waiting until they are served: server-side apply (create or replace on
//! servers before 1.25), `Established`, and discovery through kube-apiserver.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};

use super::control_plane::io;
use super::error::Error;

type Result<T, E = Error> = std::result::Result<T, E>;

/// Installs the CRDs found in `paths` (files or directories of `.yaml` files) with server-side
/// apply, waits until they are established, and returns their names.
pub async fn install_crds(client: &Client, paths: &[PathBuf]) -> Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in super::manifests::files(paths)? {
        let text = io(
            format!("reading {}", file.display()),
            fs::read_to_string(&file),
        )?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                <serde_yaml::Value as serde::Deserialize>::deserialize(doc).map_err(|e| {
                    Error::Crd {
                        path: file.clone(),
                        message: e.to_string(),
                    }
                })?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_yaml::from_value(value).map_err(|e| Error::Crd {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
            let name = crd.name_any();
            apply_crd(&api, &name, crd).await?;
            names.push(name);
        }
    }
    for name in &names {
        let cond = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), name, cond),
        )
        .await
        .map_err(|_| Error::Crd {
            path: PathBuf::from(name),
            message: "not established within 30s".into(),
        })?
        .map_err(|e| Error::Crd {
            path: PathBuf::from(name),
            message: e.to_string(),
        })?;
        wait_served(client, &api, name).await?;
    }
    Ok(names)
}

// Established is the CRD server's word; clients of kube-apiserver also need the aggregator to
// route the group (the bridge's APIService, available): wait until discovery lists the kind.
async fn wait_served(
    client: &Client,
    api: &Api<CustomResourceDefinition>,
    name: &str,
) -> Result<()> {
    let crd = api.get(name).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for version in crd.spec.versions.iter().filter(|v| v.served) {
        let group_version = format!("{}/{}", crd.spec.group, version.name);
        loop {
            let listed = client
                .list_api_group_resources(&group_version)
                .await
                .is_ok_and(|list| {
                    list.resources
                        .iter()
                        .any(|r| r.name == crd.spec.names.plural)
                });
            if listed {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Crd {
                    path: PathBuf::from(name),
                    message: format!(
                        "{group_version} not served through the API server within 60s"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

// Server-side apply first. A server older than 1.25 does not know `x-kubernetes-validations` and
// refuses to build the typed object for apply; a plain create or update then stores the CRD
// without the CEL rules (hotconf's operator checks the same rules itself).
async fn apply_crd(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    mut crd: CustomResourceDefinition,
) -> Result<()> {
    match api
        .patch(
            name,
            &PatchParams::apply("hotconf").force(),
            &Patch::Apply(&crd),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.message.contains("x-kubernetes-validations") => {
            match api.get_opt(name).await? {
                Some(existing) => {
                    crd.metadata.resource_version = existing.resource_version();
                    api.replace(name, &PostParams::default(), &crd).await?;
                }
                None => {
                    api.create(&PostParams::default(), &crd).await?;
                }
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
