//! Just enough X.509 reading for what keel reports about a certificate: who it names (URI and
//! DNS subject alternative names, the subject) and when it is valid.
//!
//! rustls verifies certificates but does not expose their names; a full X.509 parser would
//! pull in a large dependency tree for three fields. This walks the DER of a certificate that
//! rustls (or the config loader) already holds, with bounds-checked slicing only: malformed
//! input gives `None`, never a panic.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// What keel reads from one certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject as an RFC 4514 string (`CN=client,O=acme`); empty when the subject is.
    pub subject: String,
    /// `dNSName` subject alternative names, in order.
    pub dns_names: Vec<String>,
    /// `uniformResourceIdentifier` subject alternative names (SPIFFE ids), in order.
    pub uris: Vec<String>,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// The identity keel passes on for a verified client: the first URI SAN (a SPIFFE id),
    /// else the first DNS SAN, else the subject.
    pub fn identity(&self) -> Option<&str> {
        self.uris
            .first()
            .or(self.dns_names.first())
            .map(String::as_str)
            .or_else(|| (!self.subject.is_empty()).then_some(self.subject.as_str()))
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const EXPLICIT_VERSION: u8 = 0xA0;
const EXPLICIT_EXTENSIONS: u8 = 0xA3;
const SAN_DNS: u8 = 0x82;
const SAN_URI: u8 = 0x86;
const OID_SAN: &[u8] = &[0x55, 0x1D, 0x11];

/// One DER element: tag, contents, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// Expects an element with `tag`; returns its contents and the rest.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, value, rest) = tlv(input)?;
    (t == tag).then_some((value, rest))
}

/// Reads a DER certificate.
pub fn parse(der: &[u8]) -> Option<CertInfo> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&EXPLICIT_VERSION) {
        rest = tlv(rest)?.2;
    }
    let (_, _serial, r) = tlv(rest)?;
    let (_, r) = expect(r, SEQUENCE)?; // signature algorithm
    let (_, r) = expect(r, SEQUENCE)?; // issuer
    let (validity, r) = expect(r, SEQUENCE)?;
    let (subject, r) = expect(r, SEQUENCE)?;
    let (_, mut r) = expect(r, SEQUENCE)?; // subject public key info
    let (t1, v1, after) = tlv(validity)?;
    let (t2, v2, _) = tlv(after)?;
    let mut info = CertInfo {
        subject: name_string(subject),
        not_before: time(t1, v1)?,
        not_after: time(t2, v2)?,
        ..CertInfo::default()
    };
    while let Some((tag, value, next)) = tlv(r) {
        if tag == EXPLICIT_EXTENSIONS {
            read_extensions(value, &mut info);
        }
        r = next;
    }
    Some(info)
}

fn read_extensions(value: &[u8], info: &mut CertInfo) {
    let Some((mut list, _)) = expect(value, SEQUENCE) else {
        return;
    };
    while let Some((ext, next)) = expect(list, SEQUENCE) {
        list = next;
        let Some((oid, mut r)) = expect(ext, OID) else {
            continue;
        };
        if oid != OID_SAN {
            continue;
        }
        if r.first() == Some(&BOOLEAN) {
            match tlv(r) {
                Some((_, _, next)) => r = next,
                None => continue,
            }
        }
        let Some((octets, _)) = expect(r, OCTET_STRING) else {
            continue;
        };
        let Some((mut names, _)) = expect(octets, SEQUENCE) else {
            continue;
        };
        while let Some((tag, name, next)) = tlv(names) {
            names = next;
            let text = || String::from_utf8(name.to_vec()).ok();
            match tag {
                SAN_DNS => info.dns_names.extend(text()),
                SAN_URI => info.uris.extend(text()),
                _ => {}
            }
        }
    }
}

/// An RFC 4514 string of a Name: the last RDN first, `TYPE=value` joined with commas.
fn name_string(mut rdns: &[u8]) -> String {
    let mut parts = Vec::new();
    while let Some((set, next)) = expect(rdns, SET) {
        rdns = next;
        let mut attrs = set;
        let mut members = Vec::new();
        while let Some((attr, next)) = expect(attrs, SEQUENCE) {
            attrs = next;
            let Some((oid, r)) = expect(attr, OID) else {
                continue;
            };
            let Some((_, value, _)) = tlv(r) else {
                continue;
            };
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_owned(),
                [0x55, 0x04, 0x06] => "C".to_owned(),
                [0x55, 0x04, 0x07] => "L".to_owned(),
                [0x55, 0x04, 0x08] => "ST".to_owned(),
                [0x55, 0x04, 0x0A] => "O".to_owned(),
                [0x55, 0x04, 0x0B] => "OU".to_owned(),
                other => dotted_oid(other),
            };
            let value = String::from_utf8_lossy(value);
            members.push(format!("{key}={}", escape(&value)));
        }
        parts.push(members.join("+"));
    }
    parts.reverse();
    parts.join(",")
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn dotted_oid(oid: &[u8]) -> String {
    let Some((&first, rest)) = oid.split_first() else {
        return String::new();
    };
    let mut parts = vec![(first / 40).to_string(), (first % 40).to_string()];
    let mut acc: u64 = 0;
    for b in rest {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(acc.to_string());
            acc = 0;
        }
    }
    parts.join(".")
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let digits = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, rest) = match tag {
        UTC_TIME => {
            let yy = digits(text.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        GENERALIZED_TIME => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| digits(rest.get(i..i + 2)?);
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A Unix time as RFC 3339 (UTC, seconds), for messages.
pub fn rfc3339(unix: i64) -> String {
    let secs = u64::try_from(unix).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_validity_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["svc.local".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://cluster/ns/a/sa/b").unwrap(),
        ));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client one");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "acme, inc");
        params.not_before = rcgen::date_time_ymd(2020, 1, 2);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = parse(cert.der()).unwrap();
        assert_eq!(info.dns_names, vec!["svc.local"]);
        assert_eq!(info.uris, vec!["spiffe://cluster/ns/a/sa/b"]);
        assert_eq!(info.identity(), Some("spiffe://cluster/ns/a/sa/b"));
        assert_eq!(info.subject, "O=acme\\, inc,CN=client one");
        assert_eq!(rfc3339(info.not_before), "2020-01-02T00:00:00Z");
        assert_eq!(rfc3339(info.not_after), "2049-12-31T00:00:00Z");
    }

    #[test]
    fn identity_falls_back_to_dns_then_subject() {
        let mut info = CertInfo {
            subject: "CN=x".into(),
            ..CertInfo::default()
        };
        assert_eq!(info.identity(), Some("CN=x"));
        info.dns_names.push("a.b".into());
        assert_eq!(info.identity(), Some("a.b"));
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(parse(&[0x30, 0x03, 0x30, 0x01]), None);
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0x30).collect();
            let _ = parse(&junk);
        }
    }
}
