//! The local control plane's certificates: a CA and kube-apiserver's serving certificate for
//! 127.0.0.1/localhost, the service-account key pair, and what the aggregation of the CRD server
//! needs.

use std::{fs, io::Write as _, path::Path};

use super::control_plane::io;
use super::crd_server;
use super::error::Error;

// A CA and a serving certificate for 127.0.0.1/localhost, the service-account key pair, and what
// the aggregation of the CRD server needs.
pub(super) fn write_certificates(pki: &Path) -> Result<String, Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hotconf-local-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let cert = params.signed_by(&key, &issuer)?;

    let sa = KeyPair::generate()?;
    let mut files = vec![
        ("ca.crt", ca.pem()),
        ("apiserver.crt", cert.pem()),
        ("apiserver.key", key.serialize_pem()),
        ("sa.key", sa.serialize_pem()),
        ("sa.pub", sa.public_key_pem()),
    ];
    files.extend(crd_server::certificates(&issuer)?);
    for (name, pem) in files {
        let mut f = io(format!("writing {name}"), fs::File::create(pki.join(name)))?;
        io(format!("writing {name}"), f.write_all(pem.as_bytes()))?;
    }
    Ok(ca.pem())
}
