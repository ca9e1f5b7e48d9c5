//! The open-files limit: the one `setrlimit(2)` call, through nix's safe wrapper.

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft open-files limit to the hard one: each connection holds two sockets
/// and, while bytes flow, two pipes. Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_ends_at_the_hard_one() {
        let limit = raise_fd_limit().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
        assert_eq!(limit, soft);
        // Raising again changes nothing.
        assert_eq!(raise_fd_limit().unwrap(), limit);
    }
}
