//! Client certificate parsing and thumbprints. Takes the PEM text a user declared and returns what
//! the operator records and binds: the SHA-256 thumbprint in hex and in RFC 8705 form, the subject
//! and issuer as RFC 4514 strings, the serial number and the validity.
//!
//! Knows nothing about Kubernetes or Keycloak. Rejections are typed so that callers can turn each
//! into its condition reason; no error message ever contains the input text, so a private key
//! pasted by mistake cannot leak through a status, an event or a log line.

use base64::DecodeError;
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::{Any, Tag, ToDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Name;

/// The label of the one PEM block this module reads.
const CERTIFICATE_LABEL: &str = "CERTIFICATE";
/// Every private key label (`PRIVATE KEY`, `RSA PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`,
/// `OPENSSH PRIVATE KEY`, `PGP PRIVATE KEY BLOCK`, ...) contains this.
const PRIVATE_KEY_MARKER: &str = "PRIVATE KEY";
const BEGIN: &str = "-----BEGIN ";
const END: &str = "-----END ";
const DASHES: &str = "-----";

/// What the operator needs to know about a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCertificate {
    /// Lowercase hex of the SHA-256 of the DER, no colons.
    pub sha256_fingerprint: String,
    /// The same digest, base64url without padding (RFC 8705 `x5t#S256`).
    pub x5t_s256: String,
    /// RFC 4514, most specific RDN first (as `openssl x509 -nameopt RFC2253` prints it).
    pub subject: String,
    /// RFC 4514, like `subject`.
    pub issuer: String,
    /// Lowercase hex of the serial number's bytes, without the sign-padding zero byte.
    pub serial_number: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Why a PEM text is not accepted as a client certificate. The messages name the problem and
/// never quote the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// No CERTIFICATE block, or one that does not hold a DER-encoded X.509 certificate.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),

    /// A private key block anywhere in the input; `label` is the block's label, never its content.
    #[error(
        "the PEM text contains a private key ({label} block): give only the client certificate; \
         the private key stays with the client"
    )]
    PrivateKeyIncluded { label: String },

    /// The first certificate has basicConstraints CA=true: it identifies an issuer, not a client.
    #[error(
        "the certificate \"{subject}\" is a CA certificate (basicConstraints CA=true); give the \
         client certificate, first in the PEM text"
    )]
    CACertificate { subject: String },
}

/// Parses PEM text: the first CERTIFICATE block is the client certificate and later ones (its
/// chain) are ignored. A private key block anywhere in the text is rejected before anything else.
pub fn parse_pem(text: &str) -> Result<ParsedCertificate, CertificateError> {
    if let Some(label) = private_key_label(text) {
        return Err(CertificateError::PrivateKeyIncluded { label });
    }

    let der = first_certificate_der(text)?;
    let (rest, certificate) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
        invalid(format!(
            "the CERTIFICATE block does not hold a DER-encoded X.509 certificate ({e})"
        ))
    })?;
    if !rest.is_empty() {
        return Err(invalid(format!(
            "the CERTIFICATE block has {} bytes after the end of the certificate",
            rest.len()
        )));
    }

    describe(&der, &certificate)
}

fn describe(
    der: &[u8],
    certificate: &X509Certificate,
) -> Result<ParsedCertificate, CertificateError> {
    let subject = rfc4514(certificate.subject());
    let basic_constraints = certificate.basic_constraints().map_err(|e| {
        invalid(format!(
            "the basicConstraints extension cannot be read ({e})"
        ))
    })?;
    if basic_constraints.is_some_and(|bc| bc.value.ca) {
        return Err(CertificateError::CACertificate { subject });
    }

    let validity = certificate.validity();
    let digest = Sha256::digest(der);
    Ok(ParsedCertificate {
        sha256_fingerprint: hex(&digest),
        x5t_s256: URL_SAFE_NO_PAD.encode(digest),
        subject,
        issuer: rfc4514(certificate.issuer()),
        serial_number: serial_hex(certificate.raw_serial()),
        not_before: instant(validity.not_before.timestamp(), "notBefore")?,
        not_after: instant(validity.not_after.timestamp(), "notAfter")?,
    })
}

fn invalid(message: String) -> CertificateError {
    CertificateError::InvalidCertificate(message)
}

fn instant(seconds: i64, field: &str) -> Result<DateTime<Utc>, CertificateError> {
    DateTime::from_timestamp(seconds, 0)
        .ok_or_else(|| invalid(format!("the certificate's {field} is out of range")))
}

/// The label of the first private key block, if any. Looks at every line, inside other blocks
/// too, so that no arrangement of the text lets a key through.
fn private_key_label(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let after_begin = &line[line.find(BEGIN)? + BEGIN.len()..];
        let label = after_begin.split(DASHES).next().unwrap_or_default().trim();
        label
            .contains(PRIVATE_KEY_MARKER)
            .then(|| printable_label(label))
    })
}

/// Labels are plain upper-case words; anything else is not repeated back.
fn printable_label(label: &str) -> String {
    let plain = label.len() <= 40 && label.chars().all(|c| c.is_ascii_uppercase() || c == ' ');
    if plain {
        label.to_owned()
    } else {
        PRIVATE_KEY_MARKER.to_owned()
    }
}

/// The DER bytes of the first CERTIFICATE block.
fn first_certificate_der(text: &str) -> Result<Vec<u8>, CertificateError> {
    let begin = format!("{BEGIN}{CERTIFICATE_LABEL}{DASHES}");
    let end = format!("{END}{CERTIFICATE_LABEL}{DASHES}");
    let mut lines = text.lines().map(str::trim).enumerate();

    let Some((begin_index, _)) = lines.find(|(_, line)| *line == begin) else {
        return Err(invalid(format!("no {begin} block found in the PEM text")));
    };
    let mut body = String::new();
    for (_, line) in lines.by_ref() {
        if line == end {
            return decode_body(&body);
        }
        if line.starts_with(BEGIN) || line.starts_with(END) {
            break;
        }
        body.push_str(line);
    }
    Err(invalid(format!(
        "the CERTIFICATE block that starts on line {} has no {end} line",
        begin_index + 1
    )))
}

fn decode_body(body: &str) -> Result<Vec<u8>, CertificateError> {
    // Some tools drop the trailing `=`; the content is still unambiguous.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if body.is_empty() {
        return Err(invalid("the CERTIFICATE block is empty".to_owned()));
    }
    LENIENT.decode(body).map_err(|e| {
        // Only the position goes into the message: the decoder's own text quotes a byte.
        let position = match e {
            DecodeError::InvalidByte(offset, _) | DecodeError::InvalidLastSymbol(offset, _) => {
                format!(" at character {}", offset + 1)
            }
            DecodeError::InvalidLength(_) | DecodeError::InvalidPadding => String::new(),
        };
        invalid(format!(
            "the CERTIFICATE block is not valid base64{position}"
        ))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serial numbers are DER INTEGERs: a leading zero byte only keeps a high bit from reading as a
/// sign, so it is dropped, as `openssl x509 -serial` does.
fn serial_hex(raw: &[u8]) -> String {
    let significant = match raw.iter().position(|b| *b != 0) {
        Some(first) => &raw[first..],
        None => &raw[raw.len().saturating_sub(1)..],
    };
    hex(significant)
}

/// A distinguished name in RFC 4514 form, as `openssl x509 -nameopt RFC2253` prints it: RDNs in
/// reverse order separated by `,`, multi-valued RDNs joined by `+`, short attribute names,
/// special characters and non-ASCII bytes escaped, and attributes of an unknown type (or with a
/// non-string value) as `#` and the hex of their DER.
fn rfc4514(name: &X509Name) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            let attributes: Vec<String> = rdn
                .iter()
                .map(|attribute| {
                    let oid = attribute.attr_type().to_id_string();
                    match (short_name(&oid), text_value(attribute.attr_value())) {
                        (Some(short), Some(text)) => format!("{short}={}", escape(&text)),
                        (short, _) => format!(
                            "{}=#{}",
                            short.map(str::to_owned).unwrap_or(oid),
                            der_hex(attribute.attr_value())
                        ),
                    }
                })
                .collect();
            attributes.join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// The names OpenSSL prints for the attribute types seen in client certificates.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.15" => "businessCategory",
        "2.5.4.17" => "postalCode",
        "2.5.4.41" => "name",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "2.5.4.97" => "organizationIdentifier",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.3.6.1.4.1.311.60.2.1.1" => "jurisdictionL",
        "1.3.6.1.4.1.311.60.2.1.2" => "jurisdictionST",
        "1.3.6.1.4.1.311.60.2.1.3" => "jurisdictionC",
        _ => return None,
    })
}

/// The value of a string-typed attribute as text; `None` for any other ASN.1 type.
fn text_value(value: &Any) -> Option<String> {
    let data = value.data;
    match value.tag() {
        Tag::Utf8String => String::from_utf8(data.to_vec()).ok(),
        // Single-byte string types; T.61 is read as Latin-1, as OpenSSL does.
        Tag::PrintableString
        | Tag::NumericString
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::T61String => Some(data.iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// Upper case, as OpenSSL dumps it. Re-encoding a value just parsed from DER cannot fail; the
/// fallback (the content alone) only keeps this total.
fn der_hex(value: &Any) -> String {
    let der = value.to_der_vec().unwrap_or_else(|_| value.data.to_vec());
    der.iter().map(|b| format!("{b:02X}")).collect()
}

/// RFC 4514 escaping as OpenSSL's RFC2253 mode does it: `,+"\<>;` escaped with a backslash, a
/// leading `#` or space and a trailing space too, control characters and every byte of a
/// non-ASCII character as `\XX`.
fn escape(text: &str) -> String {
    let last = text.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        let edge = (i == 0 && (c == '#' || c == ' ')) || (i == last && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
            out.push(c);
        } else if c.is_ascii_control() || !c.is_ascii() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
        KeyPair, SerialNumber, date_time_ymd,
    };

    use super::*;

    struct Generated {
        pem: String,
        der: Vec<u8>,
        key_pem: String,
    }

    fn params(common_name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(vec!["client.partner.example".to_owned()])
            .expect("valid subject alternative name");
        // `new` starts with a placeholder common name; the order pushed is the order encoded.
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "FR");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Partner SA");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.not_before = date_time_ymd(2025, 1, 1);
        params.not_after = date_time_ymd(2035, 1, 1);
        params
    }

    fn self_signed(params: &CertificateParams) -> Generated {
        let key = KeyPair::generate().expect("key generation");
        let certificate = params.self_signed(&key).expect("self-signed certificate");
        Generated {
            pem: certificate.pem(),
            der: certificate.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A leaf certificate issued by a freshly made CA: (leaf, CA).
    fn issued(leaf: &CertificateParams) -> (Generated, Generated) {
        let mut ca_params = params("Partner Issuing CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("key generation");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let leaf_key = KeyPair::generate().expect("key generation");

        let leaf_certificate = leaf
            .signed_by(&leaf_key, &Issuer::new(ca_params, &ca_key))
            .expect("leaf certificate");

        let leaf = Generated {
            pem: leaf_certificate.pem(),
            der: leaf_certificate.der().to_vec(),
            key_pem: leaf_key.serialize_pem(),
        };
        let ca = Generated {
            pem: ca.pem(),
            der: ca.der().to_vec(),
            key_pem: ca_key.serialize_pem(),
        };
        (leaf, ca)
    }

    /// Runs `openssl x509 <args>` on the PEM text and returns what it prints.
    fn openssl_x509(pem: &str, args: &[&str]) -> String {
        let mut child = Command::new("openssl")
            .arg("x509")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pem.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "openssl x509 {args:?} failed");
        String::from_utf8(output.stdout).unwrap()
    }

    /// The value after `prefix` on the line of openssl's output that starts with it.
    fn openssl_field<'a>(output: &'a str, prefix: &str) -> &'a str {
        output
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {output:?}"))
            .trim()
    }

    fn assert_invalid_containing(result: Result<ParsedCertificate, CertificateError>, text: &str) {
        match result {
            Err(CertificateError::InvalidCertificate(message)) => {
                assert!(
                    message.contains(text),
                    "{message:?} should contain {text:?}"
                );
            }
            other => panic!("expected InvalidCertificate, got {other:?}"),
        }
    }

    #[test]
    fn a_client_certificate_yields_its_thumbprints_names_serial_and_validity() {
        let mut leaf_params = params("partner-1");
        leaf_params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x9f, 0x01, 0xab]));
        let (leaf, _) = issued(&leaf_params);

        let parsed = parse_pem(&leaf.pem).expect("a valid client certificate");

        let digest = Sha256::digest(&leaf.der);
        assert_eq!(parsed.sha256_fingerprint, hex(&digest));
        assert_eq!(parsed.sha256_fingerprint.len(), 64);
        assert_eq!(parsed.x5t_s256, URL_SAFE_NO_PAD.encode(digest));
        assert_eq!(parsed.x5t_s256.len(), 43);
        assert_eq!(parsed.subject, "CN=partner-1,O=Partner SA,C=FR");
        assert_eq!(parsed.issuer, "CN=Partner Issuing CA,O=Partner SA,C=FR");
        assert_eq!(parsed.serial_number, "9f01ab");
        assert_eq!(parsed.not_before.to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert_eq!(parsed.not_after.to_rfc3339(), "2035-01-01T00:00:00+00:00");
    }

    #[test]
    fn fingerprint_names_serial_and_validity_match_openssl() {
        let mut leaf_params = params("Jörg \"#1\", a+b; <x> ");
        leaf_params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "#ops");
        leaf_params.distinguished_name.push(
            DnType::CustomDnType(vec![1, 3, 6, 1, 4, 1, 99999, 1]),
            DnValue::Utf8String("custom".to_owned()),
        );
        leaf_params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0xf0, 0x0d]));
        let (leaf, _) = issued(&leaf_params);

        let parsed = parse_pem(&leaf.pem).expect("a valid client certificate");
        let printed = openssl_x509(
            &leaf.pem,
            &[
                "-noout",
                "-fingerprint",
                "-sha256",
                "-serial",
                "-subject",
                "-issuer",
                "-startdate",
                "-enddate",
                "-nameopt",
                "RFC2253",
                "-dateopt",
                "iso_8601",
            ],
        );

        let fingerprint = openssl_field(&printed, "sha256 Fingerprint=").replace(':', "");
        assert_eq!(parsed.sha256_fingerprint, fingerprint.to_lowercase());
        let serial = openssl_field(&printed, "serial=").to_lowercase();
        assert_eq!(parsed.serial_number, serial);
        assert_eq!(parsed.subject, openssl_field(&printed, "subject="));
        assert_eq!(parsed.issuer, openssl_field(&printed, "issuer="));
        let not_before = openssl_field(&printed, "notBefore=");
        assert_eq!(
            parsed.not_before.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            not_before
        );
        let not_after = openssl_field(&printed, "notAfter=");
        assert_eq!(
            parsed.not_after.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            not_after
        );
    }

    #[test]
    fn the_first_certificate_of_a_chain_is_the_client_certificate() {
        let (leaf, ca) = issued(&params("partner-1"));
        let chain = format!("{}{}", leaf.pem, ca.pem);

        let parsed = parse_pem(&chain).expect("a chain starting with the client certificate");

        assert_eq!(parsed.sha256_fingerprint, hex(&Sha256::digest(&leaf.der)));
        assert_eq!(parsed.subject, "CN=partner-1,O=Partner SA,C=FR");
    }

    #[test]
    fn text_around_blocks_crlf_and_indentation_are_tolerated() {
        let leaf = self_signed(&params("partner-1"));
        let text = format!(
            "Subject: partner-1\r\n{}\r\ntrailing note\r\n",
            leaf.pem
                .lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\r\n")
        );

        let parsed = parse_pem(&text).expect("a decorated certificate");

        assert_eq!(parsed.sha256_fingerprint, hex(&Sha256::digest(&leaf.der)));
    }

    #[test]
    fn a_ca_certificate_is_rejected() {
        let (_, ca) = issued(&params("partner-1"));

        let result = parse_pem(&ca.pem);

        assert_eq!(
            result,
            Err(CertificateError::CACertificate {
                subject: "CN=Partner Issuing CA,O=Partner SA,C=FR".to_owned()
            })
        );
    }

    #[test]
    fn a_ca_certificate_before_the_client_certificate_is_rejected() {
        let (leaf, ca) = issued(&params("partner-1"));

        let result = parse_pem(&format!("{}{}", ca.pem, leaf.pem));

        assert!(
            matches!(result, Err(CertificateError::CACertificate { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_private_key_anywhere_is_rejected_without_echoing_it() {
        let leaf = self_signed(&params("partner-1"));
        let key_body: Vec<&str> = leaf
            .key_pem
            .lines()
            .filter(|line| !line.starts_with(DASHES))
            .collect();
        let indented_key: String = leaf.key_pem.lines().map(|l| format!("    {l}\n")).collect();
        let texts = [
            format!("{}{}", leaf.pem, leaf.key_pem),
            format!("{}{}", leaf.key_pem, leaf.pem),
            format!("{}{}", leaf.pem, indented_key),
        ];

        for text in texts {
            let error = parse_pem(&text).expect_err("a PEM text with a private key");

            assert_eq!(
                error,
                CertificateError::PrivateKeyIncluded {
                    label: "PRIVATE KEY".into()
                }
            );
            let message = error.to_string();
            for line in &key_body {
                assert!(
                    !message.contains(line),
                    "the message {message:?} echoes the key"
                );
            }
        }
    }

    #[test]
    fn every_flavour_of_private_key_block_is_rejected() {
        let leaf = self_signed(&params("partner-1"));
        let labels = [
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
            "OPENSSH PRIVATE KEY",
            "DSA PRIVATE KEY",
        ];

        for label in labels {
            let text = format!(
                "{}-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n",
                leaf.pem
            );

            let result = parse_pem(&text);

            assert_eq!(
                result,
                Err(CertificateError::PrivateKeyIncluded {
                    label: label.to_owned()
                }),
                "{label}"
            );
        }
    }

    #[test]
    fn an_odd_private_key_label_is_not_repeated() {
        let text = "-----BEGIN my secret PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

        let result = parse_pem(text);

        assert_eq!(
            result,
            Err(CertificateError::PrivateKeyIncluded {
                label: "PRIVATE KEY".into()
            })
        );
    }

    #[test]
    fn garbage_without_a_certificate_block_is_invalid() {
        assert_invalid_containing(
            parse_pem("hello, this is not a certificate"),
            "no -----BEGIN CERTIFICATE----- block",
        );
        assert_invalid_containing(parse_pem(""), "no -----BEGIN CERTIFICATE----- block");
    }

    #[test]
    fn a_certificate_request_is_not_a_certificate() {
        let text = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";

        assert_invalid_containing(parse_pem(text), "no -----BEGIN CERTIFICATE----- block");
    }

    #[test]
    fn bytes_that_are_not_der_are_invalid() {
        let body = general_purpose_standard().encode(b"definitely not a certificate");
        let text = format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");

        assert_invalid_containing(
            parse_pem(&text),
            "does not hold a DER-encoded X.509 certificate",
        );
    }

    #[test]
    fn text_that_is_not_base64_is_invalid_and_not_quoted() {
        let text = "-----BEGIN CERTIFICATE-----\nMIIB%%secret%%\n-----END CERTIFICATE-----\n";

        let error = parse_pem(text).expect_err("invalid base64");

        assert_eq!(
            error,
            CertificateError::InvalidCertificate(
                "the CERTIFICATE block is not valid base64 at character 5".into()
            )
        );
    }

    #[test]
    fn an_unterminated_or_empty_block_is_invalid() {
        let leaf = self_signed(&params("partner-1"));
        let unterminated: String = leaf.pem.lines().take(3).map(|l| format!("{l}\n")).collect();
        let empty = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";

        assert_invalid_containing(
            parse_pem(&unterminated),
            "starts on line 1 has no -----END CERTIFICATE----- line",
        );
        assert_invalid_containing(parse_pem(empty), "the CERTIFICATE block is empty");
    }

    #[test]
    fn bytes_after_the_certificate_inside_its_block_are_invalid() {
        let leaf = self_signed(&params("partner-1"));
        let mut der = leaf.der.clone();
        der.extend_from_slice(&[0, 0, 0]);
        let body = general_purpose_standard().encode(&der);
        let text = format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");

        assert_invalid_containing(parse_pem(&text), "3 bytes after the end of the certificate");
    }

    #[test]
    fn serial_numbers_drop_only_the_sign_padding() {
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x01, 0x00]), "0100");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn names_escape_what_rfc_4514_reserves() {
        assert_eq!(
            escape("a,b+c\"d\\e<f>g;h"),
            "a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h"
        );
        assert_eq!(escape("#lead and trail "), "\\#lead and trail\\ ");
        assert_eq!(escape(" x#"), "\\ x#");
        assert_eq!(escape("é\u{1}"), "\\C3\\A9\\01");
        assert_eq!(escape("a=b"), "a=b");
    }

    fn general_purpose_standard() -> GeneralPurpose {
        base64::engine::general_purpose::STANDARD
    }
}
