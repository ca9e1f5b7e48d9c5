//! Targets `lists` and `log_filter`: the istio-iptables list grammar
//! (`mesh_common::lists`, shared by the injector's annotation checks and mesh-init's
//! flags) and the log-filter grammar (`mesh_common::log::LogFilter`).
//!
//! Checked on every input string:
//! - no panic;
//! - round trip: `parse(to_arg(parse(x))) == parse(x)` (lists), and
//!   `parse(display(parse(x))) == parse(x)` (log filters, whose `Display` is the canonical
//!   form);
//! - mesh-init, through its public command line (`cli::Cli::try_parse_from`, then
//!   `model::Settings::from_flags`, which is what `mesh-init` runs), accepts `to_arg` of
//!   every list the grammar accepts, for every flag that takes such a list; and accepts
//!   `x` itself exactly when the grammar does (settings.rs: "a value one accepts the other
//!   accepts too").

use clap::Parser as _;
use mesh_common::contract::init::{self as flags, Flag};
use mesh_common::lists::{self, Star};
use mesh_common::log::LogFilter;
use mesh_init::cli::Cli;
use mesh_init::model::Settings;

/// Which grammar a flag's value follows.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Ports(Star),
    Cidrs(Star),
}

/// The list flags of mesh-init and the grammar each follows.
const LIST_FLAGS: [(Flag, Kind); 6] = [
    (flags::INBOUND_PORTS, Kind::Ports(Star::Allowed)),
    (flags::EXCLUDE_INBOUND_PORTS, Kind::Ports(Star::Refused)),
    // An include list, but istio-iptables has no "all ports" for it: `*` is refused.
    (flags::OUTBOUND_PORTS, Kind::Ports(Star::Refused)),
    (flags::EXCLUDE_OUTBOUND_PORTS, Kind::Ports(Star::Refused)),
    (flags::INCLUDE_OUTBOUND_CIDRS, Kind::Cidrs(Star::Allowed)),
    (flags::EXCLUDE_OUTBOUND_CIDRS, Kind::Cidrs(Star::Refused)),
];

/// mesh-init's verdict on a whole argument vector (without the binary name), exactly as
/// `mesh-init` would reach it before touching the host.
pub fn mesh_init_accepts<S: AsRef<str>>(args: &[S]) -> Result<(), String> {
    let argv = std::iter::once(flags::BINARY.to_string())
        .chain(args.iter().map(|a| a.as_ref().to_string()));
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    Settings::from_flags(&cli.capture.flags())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// mesh-init with one list flag set to `value` (`--flag=value`, so a value that starts
/// with `-` is still a value) and every other flag at its default.
fn mesh_init_flag(flag: Flag, value: &str) -> Result<(), String> {
    mesh_init_accepts(&[format!("{}={value}", flag.long)])
}

/// Parse `s` with `kind`: `Ok(to_arg)` or the error text; asserts the round trip.
fn grammar(kind: Kind, s: &str) -> Result<String, String> {
    match kind {
        Kind::Ports(star) => {
            let l = lists::ports(s, star).map_err(|e| e.to_string())?;
            let arg = l.to_arg();
            assert_eq!(
                lists::ports(&arg, star),
                Ok(l),
                "ports({star:?}) round trip: {s:?} -> {arg:?}"
            );
            Ok(arg)
        }
        Kind::Cidrs(star) => {
            let l = lists::cidrs(s, star).map_err(|e| e.to_string())?;
            let arg = l.to_arg();
            assert_eq!(
                lists::cidrs(&arg, star),
                Ok(l),
                "cidrs({star:?}) round trip: {s:?} -> {arg:?}"
            );
            Ok(arg)
        }
    }
}

/// The `lists` target.
pub fn check_lists(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // Single items too (mesh-init's -p/-z take one port).
    let _ = lists::port(s);
    let _ = lists::cidr(s);
    for (flag, kind) in LIST_FLAGS {
        let parsed = grammar(kind, s);
        if let Ok(arg) = &parsed
            && let Err(e) = mesh_init_flag(flag, arg)
        {
            panic!(
                "mesh-init refuses {}={arg:?} (to_arg of {s:?}, which the list grammar accepts): {e}",
                flag.long
            );
        }
        let direct = mesh_init_flag(flag, s);
        assert_eq!(
            parsed.is_ok(),
            direct.is_ok(),
            "the list grammar and mesh-init disagree on {}={s:?}: grammar {parsed:?}, mesh-init {direct:?}",
            flag.long
        );
    }
}

/// The `log_filter` target.
pub fn check_log_filter(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(f) = LogFilter::parse(s) else {
        return;
    };
    let canonical = f.to_string();
    assert_eq!(
        LogFilter::parse(&canonical),
        Ok(f.clone()),
        "log filter round trip: {s:?} -> {canonical:?}"
    );
    // The canonical form is a fixed point.
    assert_eq!(
        LogFilter::parse(&canonical).map(|g| g.to_string()),
        Ok(canonical.clone())
    );
    assert!(f.max_level() >= f.default);
}
