//! Paths of the workspace's binaries, built by the same `cargo test --workspace` run.
//!
//! Each binary crate has integration tests of its own, so cargo builds its binary before
//! any test runs; these tests use the very binaries a user would install.

use std::path::PathBuf;

/// The `target/<profile>` folder this test executable was built into.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("test executable lives in target/<profile>/deps")
}

/// Absolute path of workspace binary `name` (e.g. `mesh-proxy`); panics with a clear
/// message when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds every binary",
        path.display()
    );
    path
}
