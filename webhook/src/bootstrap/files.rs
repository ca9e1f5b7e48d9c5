//! The certificate files the HTTPS server loads (and re-reads when they change).

use std::path::Path;

use super::error::BootstrapError;
use super::options::BootstrapOptions;
use super::secret::Material;

/// Writes the serving certificate and key where the server loads them, atomically and
/// only when they changed (the server reloads on change). Key first, so a reload that
/// sees the new certificate also finds its key.
pub(super) fn write_files(
    opts: &BootstrapOptions,
    material: &Material,
) -> Result<(), BootstrapError> {
    write_if_changed(&opts.key_file, material.key_pem.as_bytes(), 0o600)?;
    write_if_changed(&opts.cert_file, material.cert_pem.as_bytes(), 0o644)?;
    Ok(())
}

/// Writes `contents` to `path` (through `mesh_common::fs::write_atomic`: readers see the
/// old file or the new, never a torn one), unless it already holds exactly that.
fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> Result<(), BootstrapError> {
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    mesh_common::fs::write_atomic(path, contents, mode).map_err(|source| {
        BootstrapError::WriteFile {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    use crate::bootstrap::x509::issue_all;

    fn opts() -> BootstrapOptions {
        BootstrapOptions::for_tests()
    }

    #[test]
    fn files_are_written_atomically_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        o.cert_file = dir.path().join("certs/tls.crt");
        o.key_file = dir.path().join("certs/tls.key");
        let m = issue_all(&o, SystemTime::now(), &[]).unwrap();
        write_files(&o, &m).unwrap();
        assert_eq!(std::fs::read_to_string(&o.cert_file).unwrap(), m.cert_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&o.key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = std::fs::metadata(&o.cert_file).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        write_files(&o, &m).unwrap();
        assert_eq!(
            std::fs::metadata(&o.cert_file).unwrap().modified().unwrap(),
            before
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("certs"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 2);
    }
}
