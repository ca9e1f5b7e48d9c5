//! Socket addresses typed by the role they play in a connection, after linkerd2-proxy's
//! `addrs` module: a peer address cannot be passed where the original destination is
//! meant, and a signature says which address it wants.
//!
//! ```text
//!  app / remote client             mesh-proxy                        upstream
//!  ClientAddr ──connect──► (nat REDIRECT) ──► ListenAddr     ──connect──► OrigDstAddr
//!                          accepted socket's local end = LocalAddr
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};

macro_rules! addr_role {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name(pub SocketAddr);

        impl $name {
            pub fn addr(self) -> SocketAddr {
                self.0
            }

            pub fn ip(self) -> IpAddr {
                self.0.ip()
            }

            pub fn port(self) -> u16 {
                self.0.port()
            }
        }

        impl From<$name> for SocketAddr {
            fn from(a: $name) -> SocketAddr {
                a.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

addr_role!(
    /// The address a capture listener is really bound to (its port resolved when 0 was
    /// asked for), e.g. `0.0.0.0:15001`.
    ListenAddr
);

addr_role!(
    /// The downstream peer of an accepted connection: the app (outbound) or the remote
    /// client (inbound).
    ClientAddr
);

addr_role!(
    /// The local end of an accepted connection. After a REDIRECT it is the listener's
    /// port on the address the packet arrived at, which only a possible loop needs.
    LocalAddr
);

addr_role!(
    /// Where the client was really going, read back from the kernel after the nat
    /// REDIRECT (`SO_ORIGINAL_DST`): the address the proxy connects to.
    OrigDstAddr
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_show_their_address() {
        let a: SocketAddr = "[fd00::2]:8080".parse().unwrap();
        let o = OrigDstAddr(a);
        assert_eq!(o.to_string(), "[fd00::2]:8080");
        assert_eq!((o.ip(), o.port()), (a.ip(), 8080));
        assert_eq!(SocketAddr::from(o), a);
        assert_eq!(ClientAddr(a).addr(), a);
    }
}
