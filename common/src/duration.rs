//! The one duration syntax of every flag and config field: `250ms`, `1.5s`, `2m`, `1h`, or
//! a bare number of seconds.

use std::time::Duration;

/// Why a duration cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration (use e.g. 500ms, 5s, 1m)")]
    Syntax(String),
    #[error("unknown duration unit `{unit}` in `{value}` (use ms, s, m or h)")]
    Unit { value: String, unit: String },
    #[error("`{0}` is out of range for a duration")]
    Range(String),
}

/// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of seconds (fractions allowed).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    if num.is_empty() {
        return Err(DurationError::Syntax(s.to_owned()));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| DurationError::Syntax(s.to_owned()))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(DurationError::Unit {
                value: s.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError::Range(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse(" 1.5s "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn errors_name_the_value() {
        assert_eq!(parse(""), Err(DurationError::Syntax("".into())));
        assert_eq!(parse("s"), Err(DurationError::Syntax("s".into())));
        assert_eq!(parse("1.2.3s"), Err(DurationError::Syntax("1.2.3s".into())));
        assert_eq!(parse("-1s"), Err(DurationError::Syntax("-1s".into())));
        assert_eq!(
            parse("5d").unwrap_err().to_string(),
            "unknown duration unit `d` in `5d` (use ms, s, m or h)"
        );
        assert_eq!(
            parse("1e400").unwrap_err(),
            DurationError::Unit {
                value: "1e400".into(),
                unit: "e400".into()
            }
        );
        let huge = format!("{}h", "9".repeat(30));
        assert_eq!(parse(&huge), Err(DurationError::Range(huge.clone())));
    }
}
