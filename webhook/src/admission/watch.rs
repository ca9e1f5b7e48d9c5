//! Noticing that mounted files changed.
//!
//! Kubernetes updates a mounted Secret or ConfigMap by writing a new timestamped folder and
//! swapping the `..data` symlink, so inode events on the file itself are unreliable. We
//! poll instead and compare contents: cheap for a few kilobytes every second or two, and
//! correct for symlink swaps, in-place writes and `mv` alike.

use std::path::PathBuf;

/// The set of files one reloadable thing is built from (a cert and its key, or a config).
#[derive(Debug)]
pub struct FileSet {
    paths: Vec<PathBuf>,
    /// Contents last handed out by [`FileSet::poll`] (or given at construction).
    seen: Vec<Vec<u8>>,
    /// Last read error reported, so a missing file is logged once, not every poll.
    last_error: Option<String>,
}

/// What a poll found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    Unchanged,
    /// At least one file differs from what was seen: here are all contents, in order.
    Changed(Vec<Vec<u8>>),
    /// A file could not be read (mid-swap, deleted); a new error message is given once.
    Unreadable(Option<String>),
}

impl FileSet {
    /// Start watching `paths` whose contents are already known to be `seen`.
    pub fn new(paths: Vec<PathBuf>, seen: Vec<Vec<u8>>) -> Self {
        FileSet {
            paths,
            seen,
            last_error: None,
        }
    }

    pub fn poll(&mut self) -> Poll {
        let mut now = Vec::with_capacity(self.paths.len());
        for p in &self.paths {
            match std::fs::read(p) {
                Ok(b) => now.push(b),
                Err(e) => {
                    let msg = format!("cannot read {}: {e}", p.display());
                    if self.last_error.as_deref() == Some(msg.as_str()) {
                        return Poll::Unreadable(None);
                    }
                    self.last_error = Some(msg.clone());
                    return Poll::Unreadable(Some(msg));
                }
            }
        }
        self.last_error = None;
        if now == self.seen {
            return Poll::Unchanged;
        }
        self.seen = now.clone();
        Poll::Changed(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_content_change_through_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        let v2 = dir.path().join("v2");
        std::fs::create_dir(&v1).unwrap();
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v1.join("f"), b"one").unwrap();
        std::fs::write(v2.join("f"), b"two").unwrap();
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink("v1", &data).unwrap();
        let f = dir.path().join("f");
        std::os::unix::fs::symlink("..data/f", &f).unwrap();

        let mut set = FileSet::new(vec![f.clone()], vec![b"one".to_vec()]);
        assert_eq!(set.poll(), Poll::Unchanged);
        // Swap ..data atomically, as the kubelet does.
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("v2", &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        assert_eq!(set.poll(), Poll::Changed(vec![b"two".to_vec()]));
        assert_eq!(set.poll(), Poll::Unchanged);
        std::fs::remove_file(&data).unwrap();
        assert!(matches!(set.poll(), Poll::Unreadable(Some(m)) if m.contains("f")));
        assert_eq!(set.poll(), Poll::Unreadable(None));
    }
}
