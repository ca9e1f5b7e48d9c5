//! The rotation policy, pure: given what the Secret holds and the time, keep it or say
//! what replaces it and why. A certificate is renewed when less than a third of its
//! lifetime is left; a new CA joins the bundle next to the old one, which stays until it
//! expires.

use std::time::SystemTime;

use rcgen::KeyPair;

use super::error::BootstrapError;
use super::options::BootstrapOptions;
use super::secret::{KEY_CA_BUNDLE, KEY_CA_CERT, KEY_TLS_CERT, Material};
use super::x509::{CertInfo, issue_all, issue_ca, issue_leaf, parse_cert, split_pems};

/// A certificate is renewed when less than `1/RENEW_DIVISOR` of its lifetime is left.
const RENEW_DIVISOR: u32 = 3;

/// What to do with the material found in the Secret.
#[derive(Debug)]
pub(super) enum Decision {
    Keep(Material),
    Replace {
        material: Material,
        why: &'static str,
    },
}

impl CertInfo {
    /// True when less than a third of the lifetime is left (or it is not yet valid).
    pub(super) fn needs_renewal(&self, now: SystemTime) -> bool {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        match self.not_after.duration_since(now) {
            Ok(left) => now < self.not_before || left < lifetime / RENEW_DIVISOR,
            Err(_) => true,
        }
    }

    pub(super) fn expired(&self, now: SystemTime) -> bool {
        self.not_after <= now
    }
}

/// Pure rotation policy: keep what is stored, or say what replaces it and why.
pub(super) fn decide(
    opts: &BootstrapOptions,
    now: SystemTime,
    stored: Material,
) -> Result<Decision, BootstrapError> {
    let ca = match parse_cert(&stored.ca_cert_pem, KEY_CA_CERT) {
        Ok(ca) if KeyPair::from_pem(&stored.ca_key_pem).is_ok() => ca,
        _ => {
            return Ok(Decision::Replace {
                material: issue_all(opts, now, &[])?,
                why: "the stored CA was unusable",
            });
        }
    };
    // Older CAs stay in the bundle until they expire.
    let previous: Vec<(String, CertInfo)> = split_pems(&stored.ca_bundle_pem)
        .into_iter()
        .filter_map(|pem| parse_cert(&pem, KEY_CA_BUNDLE).ok().map(|i| (pem, i)))
        .filter(|(_, info)| !info.expired(now) && info.subject_raw != ca.subject_raw)
        .collect();

    if ca.needs_renewal(now) {
        // New CA; the old one joins the bundle. The serving certificate is re-issued by
        // the new CA only when it needs renewal itself, so the bundle carrying both CAs
        // has long reached every replica and the API server by then.
        let mut keep_old: Vec<String> = Vec::new();
        if !ca.expired(now) {
            keep_old.push(stored.ca_cert_pem.clone());
        }
        keep_old.extend(previous.iter().map(|(p, _)| p.clone()));
        let (ca_cert_pem, ca_key_pem) = issue_ca(opts, now)?;
        let leaf_ok = parse_cert(&stored.cert_pem, KEY_TLS_CERT)
            .ok()
            .is_some_and(|leaf| leaf_is_good(opts, now, &leaf, &ca, &previous));
        let (cert_pem, key_pem) = if leaf_ok {
            (stored.cert_pem.clone(), stored.key_pem.clone())
        } else {
            issue_leaf(opts, now, &ca_cert_pem, &ca_key_pem)?
        };
        let ca_bundle_pem = std::iter::once(ca_cert_pem.clone())
            .chain(keep_old)
            .collect::<String>();
        return Ok(Decision::Replace {
            material: Material {
                ca_cert_pem,
                ca_key_pem,
                ca_bundle_pem,
                cert_pem,
                key_pem,
            },
            why: "the CA is close to expiry",
        });
    }

    let leaf_ok = parse_cert(&stored.cert_pem, KEY_TLS_CERT)
        .ok()
        .is_some_and(|leaf| leaf_is_good(opts, now, &leaf, &ca, &previous))
        && KeyPair::from_pem(&stored.key_pem).is_ok();
    let expected_bundle = std::iter::once(stored.ca_cert_pem.clone())
        .chain(previous.iter().map(|(p, _)| p.clone()))
        .collect::<String>();
    if leaf_ok && expected_bundle == stored.ca_bundle_pem {
        return Ok(Decision::Keep(stored));
    }
    let (cert_pem, key_pem, why) = if leaf_ok {
        (
            stored.cert_pem.clone(),
            stored.key_pem.clone(),
            "an expired CA left the bundle",
        )
    } else {
        let (c, k) = issue_leaf(opts, now, &stored.ca_cert_pem, &stored.ca_key_pem)?;
        (
            c,
            k,
            "the serving certificate is close to expiry or does not match the Service",
        )
    };
    Ok(Decision::Replace {
        material: Material {
            ca_bundle_pem: expected_bundle,
            cert_pem,
            key_pem,
            ..stored
        },
        why,
    })
}

/// A serving certificate is good while it is not due for renewal, names exactly the
/// Service's DNS names, and was issued by a CA that is in the bundle.
fn leaf_is_good(
    opts: &BootstrapOptions,
    now: SystemTime,
    leaf: &CertInfo,
    ca: &CertInfo,
    previous: &[(String, CertInfo)],
) -> bool {
    let mut want = opts.dns_names();
    want.sort();
    let mut have = leaf.dns_names.clone();
    have.sort();
    let issuer_known = leaf.issuer_raw == ca.subject_raw
        || previous
            .iter()
            .any(|(_, p)| leaf.issuer_raw == p.subject_raw);
    !leaf.needs_renewal(now) && want == have && issuer_known
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bootstrap::options::DAY;

    fn opts() -> BootstrapOptions {
        BootstrapOptions::for_tests()
    }

    #[test]
    fn fresh_material_names_the_service_and_chains_to_the_ca() {
        let now = SystemTime::now();
        let m = issue_all(&opts(), now, &[]).unwrap();
        let leaf = parse_cert(&m.cert_pem, "leaf").unwrap();
        let ca = parse_cert(&m.ca_cert_pem, "ca").unwrap();
        assert_eq!(
            leaf.dns_names,
            [
                "mesh-webhook",
                "mesh-webhook.mesh-system",
                "mesh-webhook.mesh-system.svc",
                "mesh-webhook.mesh-system.svc.cluster.local"
            ]
        );
        assert_eq!(leaf.issuer_raw, ca.subject_raw);
        assert_eq!(m.ca_bundle_pem, m.ca_cert_pem);
        assert!(matches!(decide(&opts(), now, m.clone()).unwrap(), Decision::Keep(k) if k == m));
    }

    #[test]
    fn serving_cert_renewed_with_a_third_left_same_ca() {
        let now = SystemTime::now();
        let m = issue_all(&opts(), now, &[]).unwrap();
        let later = now + DAY * 250; // 115 of 365 days left: less than a third
        let Decision::Replace { material, .. } = decide(&opts(), later, m.clone()).unwrap() else {
            panic!("expected a renewal")
        };
        assert_eq!(material.ca_cert_pem, m.ca_cert_pem);
        assert_ne!(material.cert_pem, m.cert_pem);
        let early = now + DAY * 200;
        assert!(matches!(
            decide(&opts(), early, m).unwrap(),
            Decision::Keep(_)
        ));
    }

    #[test]
    fn ca_rotation_keeps_the_old_ca_in_the_bundle_until_it_expires() {
        let now = SystemTime::now();
        let m = issue_all(&opts(), now, &[]).unwrap();
        let later = now + DAY * 2500; // 1150 of 3650 days left
        let Decision::Replace { material, .. } = decide(&opts(), later, m.clone()).unwrap() else {
            panic!("expected CA rotation")
        };
        assert_ne!(material.ca_cert_pem, m.ca_cert_pem);
        assert!(material.ca_bundle_pem.starts_with(&material.ca_cert_pem));
        assert!(material.ca_bundle_pem.contains(&m.ca_cert_pem));
        assert_eq!(split_pems(&material.ca_bundle_pem).len(), 2);
        // Once the old CA has expired it leaves the bundle.
        let much_later = now + DAY * 3651;
        let Decision::Replace { material: m3, .. } =
            decide(&opts(), much_later, material.clone()).unwrap()
        else {
            panic!("expected the bundle to shrink")
        };
        assert_eq!(m3.ca_cert_pem, material.ca_cert_pem);
        assert_eq!(
            split_pems(&m3.ca_bundle_pem),
            vec![material.ca_cert_pem.clone()]
        );
    }

    #[test]
    fn leaf_for_another_service_is_reissued() {
        let now = SystemTime::now();
        let m = issue_all(&opts(), now, &[]).unwrap();
        let mut other = opts();
        other.service_name = "other".into();
        let Decision::Replace { material, .. } = decide(&other, now, m.clone()).unwrap() else {
            panic!("expected a new leaf")
        };
        assert_eq!(material.ca_cert_pem, m.ca_cert_pem);
        assert!(
            parse_cert(&material.cert_pem, "leaf")
                .unwrap()
                .dns_names
                .contains(&"other.mesh-system.svc".to_owned())
        );
    }

    #[test]
    fn garbage_ca_is_replaced_not_trusted() {
        let now = SystemTime::now();
        let mut m = issue_all(&opts(), now, &[]).unwrap();
        m.ca_cert_pem = "not a certificate".into();
        assert!(matches!(
            decide(&opts(), now, m).unwrap(),
            Decision::Replace { .. }
        ));
    }
}
