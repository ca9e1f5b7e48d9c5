//! The access log: one line per connection, written by the connection's
//! [`ConnRecord`](crate::record::ConnRecord) when it ends (never by anyone else).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::addrs::{ClientAddr, OrigDstAddr};
use crate::config::AccessLogFormat;
use crate::direction::Direction;
use crate::metrics::ResponseFlags;

/// One access-log record.
#[derive(Debug)]
pub struct LogLine {
    pub started: SystemTime,
    pub duration: Duration,
    pub direction: Direction,
    pub peer: ClientAddr,
    /// `None` when the kernel had none (the connection was refused for it).
    pub orig: Option<OrigDstAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub received: u64,
    pub sent: u64,
    pub flags: ResponseFlags,
    pub error: Option<&'static str>,
}

impl LogLine {
    /// The JSON object, on one line. Every value is a number, an address or a fixed
    /// word, so none needs escaping.
    pub fn to_json(&self) -> String {
        let start_ms = self
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let quoted_or_null =
            |v: Option<String>| v.map_or_else(|| "null".to_owned(), |v| format!("\"{v}\""));
        let orig = quoted_or_null(self.orig.map(|a| a.to_string()));
        let upstream = quoted_or_null(self.upstream_local.map(|a| a.to_string()));
        let error = quoted_or_null(self.error.map(str::to_owned));
        format!(
            "{{\"start_time_ms\":{start_ms},\"duration_ms\":{},\"direction\":\"{}\",\"downstream_peer\":\"{}\",\"original_dst\":{orig},\"upstream_local\":{upstream},\"bytes_received\":{},\"bytes_sent\":{},\"response_flags\":\"{}\",\"error\":{error}}}",
            self.duration.as_millis(),
            self.direction,
            self.peer,
            self.received,
            self.sent,
            self.flags.as_str(),
        )
    }
}

/// Lines kept in memory by [`AccessLog::capture`].
pub type Captured = Arc<Mutex<Vec<String>>>;

#[derive(Debug)]
enum Sink {
    Stdout,
    Memory(Captured),
}

/// Where (and whether) access-log lines go.
#[derive(Debug)]
pub struct AccessLog {
    format: Option<AccessLogFormat>,
    sink: Sink,
}

impl AccessLog {
    /// `--access-log`: lines on stdout, or none.
    pub fn stdout(format: Option<AccessLogFormat>) -> AccessLog {
        AccessLog {
            format,
            sink: Sink::Stdout,
        }
    }

    /// Lines kept in memory instead (each without its newline): for tests.
    pub fn capture(format: AccessLogFormat) -> (AccessLog, Captured) {
        let lines = Captured::default();
        let log = AccessLog {
            format: Some(format),
            sink: Sink::Memory(lines.clone()),
        };
        (log, lines)
    }

    /// Whether lines are written at all (callers skip the work for them otherwise).
    pub fn enabled(&self) -> bool {
        self.format.is_some()
    }

    pub fn write(&self, line: &LogLine) {
        let Some(AccessLogFormat::Json) = self.format else {
            return;
        };
        let mut text = line.to_json();
        match &self.sink {
            Sink::Stdout => {
                text.push('\n');
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
            }
            Sink::Memory(lines) => lines.lock().unwrap_or_else(|p| p.into_inner()).push(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn access_log_line_is_json() {
        let l = LogLine {
            started: UNIX_EPOCH + Duration::from_millis(1234),
            duration: Duration::from_millis(56),
            direction: Direction::Inbound,
            peer: ClientAddr(a("198.18.0.1:5555")),
            orig: Some(OrigDstAddr(a("[fd00::2]:8080"))),
            upstream_local: None,
            received: 10,
            sent: 20,
            flags: ResponseFlags::UpstreamFailure,
            error: Some("refused"),
        };
        assert_eq!(
            l.to_json(),
            "{\"start_time_ms\":1234,\"duration_ms\":56,\"direction\":\"inbound\",\"downstream_peer\":\"198.18.0.1:5555\",\"original_dst\":\"[fd00::2]:8080\",\"upstream_local\":null,\"bytes_received\":10,\"bytes_sent\":20,\"response_flags\":\"UF\",\"error\":\"refused\"}"
        );
    }

    #[test]
    fn unknown_destination_is_null_and_disabled_log_writes_nothing() {
        let l = LogLine {
            started: UNIX_EPOCH,
            duration: Duration::ZERO,
            direction: Direction::Outbound,
            peer: ClientAddr(a("127.0.0.1:1")),
            orig: None,
            upstream_local: Some(a("127.0.0.1:2")),
            received: 0,
            sent: 0,
            flags: ResponseFlags::NoRoute,
            error: Some("no_original_dst"),
        };
        let json = l.to_json();
        assert!(
            json.contains("\"original_dst\":null,\"upstream_local\":\"127.0.0.1:2\""),
            "{json}"
        );
        assert!(json.contains("\"response_flags\":\"NR\""), "{json}");
        let (log, lines) = AccessLog::capture(AccessLogFormat::Json);
        log.write(&l);
        assert_eq!(lines.lock().unwrap().as_slice(), [json]);
        let off = AccessLog::stdout(None);
        assert!(!off.enabled());
        off.write(&l); // nothing, and no panic
    }
}
