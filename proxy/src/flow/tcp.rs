//! The L4 protocol: bytes both ways, unchanged, until both ends close. (Protocol
//! detection and the HTTP path will sit beside this, on the same connections.)

use std::io;

use tokio::net::TcpStream;

use super::Shared;
use crate::copy::{self, Meters};

/// Copies between `client` and `upstream` until both directions end. The caller closes
/// both sockets (by dropping them) after recording the end, so whoever sees them close
/// finds the connection counted.
///
/// A plain function returning the copy's future, not an `async fn`: another layer would
/// keep its own copy of these arguments in every connection's task.
pub(super) fn forward<'a>(
    shared: &Shared,
    client: &'a mut TcpStream,
    upstream: &'a mut TcpStream,
    meters: &'a Meters<'a>,
) -> impl Future<Output = io::Result<()>> + 'a {
    copy::duplex(client, upstream, shared.config.copy_mode, meters)
}
