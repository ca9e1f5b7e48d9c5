//! Golden rules: each `testdata/golden/<case>.args` (istio-iptables arguments, one line,
//! single quotes for empty or special values) has the expected `iptables-restore`
//! input in `<case>.v4` and `<case>.v6`. The rendered rules and the binary's
//! `--dry-run` output must both equal them. `UPDATE_GOLDEN=1` rewrites the files; a
//! missing golden or one without its `.args` fails the run.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use mesh_init::cli::Cli;
use mesh_init::model::{Family, Settings};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden")
}

/// Splits one line into arguments: whitespace separates, '...' quotes (possibly empty).
fn split_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.trim().chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    args.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    if started {
        args.push(cur);
    }
    args
}

fn ext(family: Family) -> &'static str {
    match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn render(args: &[String]) -> Vec<(Family, String)> {
    let cli = Cli::try_parse_from(std::iter::once("mesh-init".to_string()).chain(args.to_vec()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let settings =
        Settings::from_flags(&cli.capture.flags()).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    Family::ALL
        .iter()
        .map(|&f| {
            let text = mesh_init::dry_run_text(&settings, &[f], cli.run.cleanup);
            let body = text
                .strip_prefix(mesh_init::dry_run_header(f))
                .expect("header")
                .to_owned();
            (f, body)
        })
        .collect()
}

#[test]
fn golden_rules_and_dry_run_agree() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut cases = BTreeSet::new();
    let mut others = BTreeSet::new();
    for entry in std::fs::read_dir(dir()).expect("read testdata/golden") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match name.rsplit_once('.') {
            Some((case, "args")) => {
                cases.insert(case.to_owned());
            }
            Some((case, "v4" | "v6")) => {
                others.insert((case.to_owned(), name));
            }
            _ => panic!("unexpected file in testdata/golden: {name}"),
        }
    }
    assert!(cases.len() >= 12, "only {} golden cases", cases.len());
    let orphans: Vec<_> = others
        .iter()
        .filter(|(case, _)| !cases.contains(case))
        .map(|(_, n)| n.clone())
        .collect();
    assert!(orphans.is_empty(), "goldens without .args: {orphans:?}");

    let mut failures = Vec::new();
    for case in &cases {
        let line = std::fs::read_to_string(dir().join(format!("{case}.args"))).unwrap();
        let args = split_args(&line);
        let rendered = render(&args);
        let mut expected_dry_run = String::new();
        for (family, text) in &rendered {
            let path = dir().join(format!("{case}.{}", ext(*family)));
            if update {
                std::fs::write(&path, text).unwrap();
            }
            match std::fs::read_to_string(&path) {
                Ok(golden) if golden == *text => {}
                Ok(golden) => failures.push(format!(
                    "{}: rendered rules differ\n--- golden\n{golden}--- rendered\n{text}",
                    path.display()
                )),
                Err(e) => failures.push(format!(
                    "{}: missing golden ({e}); run with UPDATE_GOLDEN=1",
                    path.display()
                )),
            }
            expected_dry_run.push_str(mesh_init::dry_run_header(*family));
            expected_dry_run.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
        // The binary a user runs must print exactly the goldens.
        let out = Command::new(env!("CARGO_BIN_EXE_mesh-init"))
            .arg("--dry-run")
            .args(&args)
            .output()
            .expect("run mesh-init");
        assert!(
            out.status.success(),
            "{case}: mesh-init --dry-run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        if stdout != expected_dry_run {
            failures.push(format!(
                "{case}: --dry-run output differs from goldens\n{stdout}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn arg_splitter_keeps_empty_quoted_values() {
    assert_eq!(split_args("-x '' -b '*'"), vec!["-x", "", "-b", "*"]);
    assert_eq!(split_args(""), Vec::<String>::new());
}

#[test]
fn bad_flags_fail_with_one_line_naming_the_flag_and_touch_nothing() {
    for (args, needle) in [
        (vec!["-x", "*"], "-x/--exclude-outbound-cidrs"),
        (vec!["-i", "10.0.0.0/40"], "-i/--include-outbound-cidrs"),
        (vec!["-d", "99999"], "-d/--exclude-inbound-ports"),
        (vec!["-u", "istio"], "-u/--proxy-uid"),
        (vec!["-m", "TPROXY"], "TPROXY"),
    ] {
        // No --dry-run: validation must stop it before any tool runs.
        let out = Command::new(env!("CARGO_BIN_EXE_mesh-init"))
            .args(&args)
            .env("PATH", "/nonexistent")
            .output()
            .expect("run mesh-init");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn bare_address_in_a_cidr_flag_is_refused_naming_the_flag_and_the_fix() {
    for (args, flag, fix) in [
        (
            ["-x", "10.0.0.1"],
            "-x/--exclude-outbound-cidrs",
            "10.0.0.1/32",
        ),
        (
            ["-i", "fd00::7"],
            "-i/--include-outbound-cidrs",
            "fd00::7/128",
        ),
    ] {
        for dry_run in [false, true] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-init"));
            if dry_run {
                cmd.arg("--dry-run");
            }
            let out = cmd
                .args(args)
                .env("PATH", "/nonexistent")
                .output()
                .expect("run mesh-init");
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            assert!(out.stdout.is_empty(), "{args:?}: nothing rendered");
            let err = String::from_utf8(out.stderr).unwrap();
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(flag), "{args:?}: {err}");
            assert!(err.contains(&format!("write {fix}")), "{args:?}: {err}");
        }
    }
}

#[test]
fn explain_subcommand_prints_the_outcome() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-init"))
        .args(["explain", "--uid", "1000", "--dst", "198.18.0.2:80"])
        .output()
        .expect("run mesh-init");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("outcome: redirect 15001\n"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-init"))
        .args(["explain", "--uid", "1337", "--dst", "198.18.0.2:80"])
        .output()
        .expect("run mesh-init");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("outcome: pass\n")
    );
    // DNS: with --dns-capture (or istio-iptables' --redirect-dns) the app's UDP and TCP
    // to port 53 go to the proxy's DNS port; the proxy's own query goes out.
    for (switch, proto, uid, want) in [
        (
            "--dns-capture",
            Some("--udp"),
            "1000",
            "outcome: redirect 15053\nrule: -A ISTIO_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053\n",
        ),
        (
            "--redirect-dns",
            None,
            "1000",
            "outcome: redirect 15053\nrule: -A ISTIO_OUTPUT -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053\n",
        ),
        (
            "--dns-capture",
            Some("--udp"),
            "1337",
            "outcome: pass\nrule: -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mesh-init"))
            .args(["explain", switch, "--uid", uid, "--dst", "10.96.0.10:53"])
            .args(proto)
            .output()
            .expect("run mesh-init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.starts_with(want),
            "{switch} {proto:?} uid {uid}: {text}"
        );
    }
    // Without it, UDP DNS is not ours.
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-init"))
        .args([
            "explain",
            "--udp",
            "--uid",
            "1000",
            "--dst",
            "10.96.0.10:53",
        ])
        .output()
        .expect("run mesh-init");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("outcome: pass\n")
    );
}
