//! A certificate authority made in the test, and a server certificate it signed for
//! `localhost` and `127.0.0.1`: for serving HTTPS in a test and for clients that must
//! verify it through a CA file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// PEM files written by [`TestCa::create`].
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA's certificate: what clients trust (`coordinator.ca_file`).
    pub ca_file: PathBuf,
    /// The server's certificate, signed by the CA, for `localhost` and `127.0.0.1`.
    pub cert_file: PathBuf,
    /// The server certificate's private key.
    pub key_file: PathBuf,
}

impl TestCa {
    /// Makes a CA and a server certificate valid for a day; writes `ca.pem`,
    /// `server.pem` and `server.key` into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<TestCa> {
        let ca_key = new_key()?;
        let ca = certificate("Ferry test CA", &ca_key, None, true)?;
        let server_key = new_key()?;
        let server = certificate("localhost", &server_key, Some((&ca, &ca_key)), false)?;
        let out = TestCa {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
        };
        std::fs::write(&out.ca_file, ca.to_pem()?).context("writing ca.pem")?;
        std::fs::write(&out.cert_file, server.to_pem()?).context("writing server.pem")?;
        std::fs::write(&out.key_file, server_key.private_key_to_pem_pkcs8()?)
            .context("writing server.key")?;
        Ok(out)
    }
}

fn new_key() -> anyhow::Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

/// A certificate for `common_name` and `key`, signed by `issuer` (self-signed when
/// `None`); a CA certificate when `ca`, else a server certificate for `localhost` and
/// `127.0.0.1`.
fn certificate(
    common_name: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
) -> anyhow::Result<X509> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(issuer.map_or(&*name, |(cert, _)| cert.subject_name()))?;
    b.set_pubkey(key)?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(1)?);
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
    } else {
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()?,
        )?;
        b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    }
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    if !ca {
        let issuer_cert = issuer.map(|(cert, _)| &**cert);
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(issuer_cert, None))?;
        b.append_extension(aki)?;
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(issuer_cert, None))?;
        b.append_extension(san)?;
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256())?;
    Ok(b.build())
}
