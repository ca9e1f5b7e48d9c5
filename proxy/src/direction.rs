//! Which way a connection crosses the pod: the first thing the proxy splits on (see
//! [`crate::flow`]), and a label on every metric.

use std::fmt;

/// Which capture listener a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The pod's own app dialled out (port 15001).
    Outbound,
    /// Someone dialled the pod (port 15006).
    Inbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    /// Istio's `reporter`: the client's sidecar reports as `source`, the server's as
    /// `destination`.
    pub fn reporter(self) -> &'static str {
        match self {
            Direction::Outbound => "source",
            Direction::Inbound => "destination",
        }
    }

    /// Index into per-direction arrays.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_reporters() {
        assert_eq!(Direction::Outbound.to_string(), "outbound");
        assert_eq!(Direction::Inbound.reporter(), "destination");
        assert_eq!(
            Direction::ALL.map(Direction::index),
            [0, 1],
            "per-direction arrays are indexed 0 and 1"
        );
    }
}
