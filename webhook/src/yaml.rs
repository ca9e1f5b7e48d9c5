//! Multi-document YAML for kube-inject: split a stream into documents (keeping each one's
//! text and first line), parse one into `serde_json::Value`, write one back.
//!
//! Parsing follows what Kubernetes' YAML reader (YAML 1.1) would make of a manifest:
//! `0644` is octal (420), `yes`/`on` are booleans. Writing quotes every string that a YAML
//! 1.1 reader would take for something else (`"on"`, `"yes"`, `"0755"`, `"1e3"`, `"~"`), so
//! `kubectl apply` reads back exactly the value we wrote.
//!
//! A document boundary is a `---` line at column 0: YAML forbids such a line inside any
//! scalar, so splitting on it is exact, and lets unchanged documents be copied verbatim,
//! comments included.

use serde_json::Value;

/// One document of a stream, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDoc<'a> {
    /// The document's text, starting with its `---` line when it has one.
    pub text: &'a str,
    /// 1-based line of `text`'s first line in the stream.
    pub first_line: usize,
    /// Whether `text` starts with a `---` marker line.
    pub has_marker: bool,
}

impl RawDoc<'_> {
    /// Only blank lines, comments and a bare marker: not a document. A marker line with
    /// content after it (`--- {kind: Pod, ...}`) starts a document.
    pub fn is_empty(&self) -> bool {
        self.text.lines().enumerate().all(|(i, l)| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || (i == 0 && self.has_marker && is_bare_marker(l))
        })
    }
}

/// A YAML syntax (or shape) error, with a 1-based line and column in the whole stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn is_marker(line: &str) -> bool {
    let line = line.trim_end_matches(['\r', '\n']);
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// A `---` line with nothing after it but blanks or a comment.
pub fn is_bare_marker(line: &str) -> bool {
    is_marker(line)
        && line.strip_prefix("---").is_some_and(|rest| {
            let rest = rest.trim();
            rest.is_empty() || rest.starts_with('#')
        })
}

fn starts_with_marker(text: &str) -> bool {
    text.split_inclusive('\n').next().is_some_and(is_marker)
}

/// Split a stream at `---` lines.
pub fn split_documents(input: &str) -> Vec<RawDoc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (line_no, line) in (1usize..).zip(input.split_inclusive('\n')) {
        if is_marker(line) && offset > start {
            docs.push(RawDoc {
                text: &input[start..offset],
                first_line: start_line,
                has_marker: starts_with_marker(&input[start..]),
            });
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
    }
    if offset > start || docs.is_empty() {
        docs.push(RawDoc {
            text: &input[start..],
            first_line: start_line,
            has_marker: starts_with_marker(&input[start..]),
        });
    }
    docs
}

fn parse_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.legacy_octal_numbers = true;
    o.with_snippet = false;
    o
}

/// Parse one document; `None` when it holds no content. Lines in errors count from the
/// start of the stream.
pub fn parse_document(doc: &RawDoc<'_>) -> Result<Option<Value>, YamlError> {
    if doc.is_empty() {
        return Ok(None);
    }
    let value: Value =
        serde_saphyr::from_str_with_options(doc.text, parse_options()).map_err(|e| {
            let e = e.without_snippet();
            let (line, column) = e
                .location()
                .map(|l| (l.line() as usize, l.column() as usize))
                .unwrap_or((1, 1));
            YamlError {
                line: doc.first_line + line.saturating_sub(1),
                column,
                message: strip_location(&e.to_string()),
            }
        })?;
    Ok(Some(value))
}

/// saphyr appends its own (document-relative) position; ours replaces it.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Write one document (no `---` marker), ending in a newline.
pub fn to_yaml(value: &Value) -> Result<String, String> {
    let mut out = serde_saphyr::to_string(value).map_err(|e| e.to_string())?;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_at_markers_only() {
        let s = "# head\na: 1\n---\nb: |\n  ---x\n  text\n--- \nc: 3\n";
        let d = split_documents(s);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].text, "# head\na: 1\n");
        assert!(!d[0].has_marker);
        assert_eq!(d[1].first_line, 3);
        assert!(d[1].has_marker);
        assert_eq!(d[2].first_line, 7);
        assert_eq!(d.iter().map(|d| d.text).collect::<String>(), s);
        assert_eq!(
            parse_document(&d[1]).unwrap().unwrap(),
            json!({"b": "---x\ntext\n"})
        );
    }

    #[test]
    fn empty_and_comment_only_documents() {
        let d = split_documents("---\n# only a comment\n---\n");
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(RawDoc::is_empty));
        assert_eq!(parse_document(&d[0]).unwrap(), None);
        assert_eq!(split_documents("").len(), 1);
    }

    #[test]
    fn errors_carry_stream_lines() {
        let s = "a: 1\n---\nb: 2\nc: [1, 2\n";
        let d = split_documents(s);
        let e = parse_document(&d[1]).unwrap_err();
        assert!(e.line >= 3, "{e}");
        assert!(!e.message.is_empty());
    }

    #[test]
    fn yaml11_scalars_read_like_kubernetes() {
        let d = split_documents("mode: 0644\nflag: yes\nport: 8080\nname: \"0755\"\n");
        let v = parse_document(&d[0]).unwrap().unwrap();
        assert_eq!(
            v,
            json!({"mode": 420, "flag": true, "port": 8080, "name": "0755"})
        );
    }

    /// Strings a YAML 1.1 reader (kubectl) would take for booleans, numbers or null must be
    /// quoted on the way out, and read back as the same strings.
    #[test]
    fn ambiguous_strings_round_trip_as_strings() {
        let tricky = [
            "on",
            "off",
            "yes",
            "no",
            "y",
            "n",
            "Y",
            "N",
            "true",
            "False",
            "YES",
            "null",
            "~",
            "Null",
            "",
            "0755",
            "0644",
            "0x1F",
            "1e3",
            "1_000",
            "12:30",
            "3.14",
            ".5",
            ".inf",
            "-.Inf",
            ".NaN",
            "123",
            "-1",
            "+1",
            "2001-12-14",
            "2001-12-14t21:59:43.10-05:00",
            "*",
            "&a",
            "!tag",
            "@x",
            "`x",
            "- x",
            "? x",
            ": x",
            "a: b",
            "a #b",
            "#c",
            "[x]",
            "{x}",
            "x,y",
            "'q'",
            "\"d\"",
            " lead",
            "trail ",
            "multi\nline",
            "tab\there",
            "%p",
            "---",
            "...",
            "|",
            ">",
            "=",
            "<<",
        ];
        for s in tricky {
            let v = json!({"k": s, "list": [s]});
            let text = to_yaml(&v).unwrap();
            let back = parse_document(&split_documents(&text)[0])
                .unwrap_or_else(|e| panic!("{s:?} -> {text}: {e}"))
                .unwrap();
            assert_eq!(back, v, "{s:?} was written as {text}");
        }
    }

    #[test]
    fn numbers_and_nesting_round_trip() {
        let v = json!({"a": 1, "b": -2.5, "c": true, "d": null, "e": [], "f": {},
                       "g": [{"x": [1, {"y": "z"}]}], "big": 9007199254740993u64});
        let text = to_yaml(&v).unwrap();
        let back = parse_document(&split_documents(&text)[0]).unwrap().unwrap();
        assert_eq!(back, v, "{text}");
    }
}
