//! Test certificates made on the spot (rcgen): a CA, and server and client certificates it
//! signs, as PEM text and files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Self { issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate") }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), with subject CN `cn`.
    pub fn server(&self, cn: &str, names: &[&str]) -> Pair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.sign(cn, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with subject CN `cn` and no other name.
    pub fn client(&self, cn: &str) -> Pair {
        self.sign(cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(&self, cn: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Pair {
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Pair { cert: cert.pem(), key: key.serialize_pem() }
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

impl Pair {
    /// Writes `<name>.crt` and `<name>.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (write(dir, &format!("{name}.crt"), &self.cert), write(dir, &format!("{name}.key"), &self.key))
    }
}
