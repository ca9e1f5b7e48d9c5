//! Kubernetes resource quantities (`100m`, `128Mi`, `1e3`), as far as the injector needs
//! them: validated, and compared by their approximate value.

/// Validate a Kubernetes resource quantity (`100m`, `1.5`, `128Mi`, `1e3`, `2G`) and return
/// its approximate value, for comparisons. Negative quantities are refused.
pub fn parse_quantity(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let err = || format!("{s:?} is not a Kubernetes quantity (like 100m, 0.5, 128Mi, 1G)");
    let num_end = t
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && c == '+')))
        .map_or(t.len(), |(i, _)| i);
    let (num, suffix) = t.split_at(num_end);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp = &e[1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(err());
            }
            let exp: i32 = exp.parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    Ok(value * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in [
            "100m", "0.5", "1", "128Mi", "1Gi", "2G", "1e3", "1E-2", "+1", ".5", "10k",
        ] {
            assert!(parse_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "lots", "-1", "1.2.3", "10mb", "1e", "Mi", "1 Mi", "1ki"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_quantity("1Ki").unwrap(), 1024.0);
        assert!(parse_quantity("100m").unwrap() < parse_quantity("1").unwrap());
    }
}
