//! Black-box tests of the `embercache` binary on real data directories.

#![cfg(feature = "cli")]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_embercache"))
}

/// Runs the binary with `args` and `stdin`, returning its output.
fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn embercache");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn ok(args: &[&str]) -> Output {
    let out = run(args, b"");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(dir: &Path) -> &str {
    dir.to_str().expect("utf-8 temp path")
}

#[test]
fn set_get_del_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    ok(&["set", d, "price", "m42", r#"{"bid":0.41}"#, "--ttl", "2m"]);
    assert_eq!(ok(&["get", d, "price", "m42"]).stdout, br#"{"bid":0.41}"#);
    // A value from stdin keeps its bytes, invalid UTF-8 included.
    let out = run(&["set", d, "blob", "k", "-"], b"\xff\x00raw");
    assert!(out.status.success());
    assert_eq!(ok(&["get", d, "blob", "k"]).stdout, b"\xff\x00raw");
    ok(&["del", d, "price", "m42"]);
    let out = run(&["get", d, "price", "m42"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn get_of_absent_key_exits_1_with_empty_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    ok(&["set", d, "ns", "present", "v"]);
    let out = run(&["get", d, "ns", "absent"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn read_commands_do_not_create_a_database() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    let out = run(&["get", p(&missing), "ns", "k"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no embercache database"));
    assert!(!missing.exists());
}

#[test]
fn bad_ttl_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    for ttl in ["0s", "5q", "-1s", "1.5s", ""] {
        let out = run(&["set", p(tmp.path()), "ns", "k", "v", "--ttl", ttl], b"");
        assert_eq!(out.status.code(), Some(2), "--ttl {ttl:?}");
    }
}

#[test]
fn export_then_import_round_trips() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (da, db) = (p(a.path()), p(b.path()));
    ok(&["set", da, "price", "m1", "0.42", "--ttl", "10m"]);
    ok(&["set", da, "market", "m1", r#"{"q":"will it rain?"}"#]);
    let out = run(&["set", da, "blob", "k", "-"], b"\x00\xfe\xff");
    assert!(out.status.success());
    let dump = ok(&["export", da]).stdout;
    let lines = parse_lines(&dump);
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().any(|l| l["value_b64"].is_string()));
    assert!(lines.iter().any(|l| l["expires_at_ms"].is_u64()));
    let out = run(&["import", db], &dump);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ok(&["get", db, "price", "m1"]).stdout, b"0.42");
    assert_eq!(
        ok(&["get", db, "market", "m1"]).stdout,
        br#"{"q":"will it rain?"}"#
    );
    assert_eq!(ok(&["get", db, "blob", "k"]).stdout, b"\x00\xfe\xff");
    // Expiry travels as an absolute time and comes back as a TTL measured
    // from the import, so it may move by a few milliseconds.
    let again = parse_lines(&ok(&["export", db]).stdout);
    assert_eq!(again.len(), lines.len());
    for (x, y) in lines.iter().zip(&again) {
        let (mut x, mut y) = (x.clone(), y.clone());
        let ex = x.as_object_mut().unwrap().remove("expires_at_ms");
        let ey = y.as_object_mut().unwrap().remove("expires_at_ms");
        assert_eq!(x, y);
        match (ex.and_then(|v| v.as_u64()), ey.and_then(|v| v.as_u64())) {
            (None, None) => {}
            (Some(a), Some(b)) => assert!(a.abs_diff(b) < 1000, "{a} vs {b}"),
            other => panic!("expiry lost or invented: {other:?}"),
        }
    }
}

fn parse_lines(dump: &[u8]) -> Vec<serde_json::Value> {
    dump.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("export line is JSON"))
        .collect()
}

#[test]
fn import_stops_at_a_malformed_line_and_keeps_the_ones_before() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    let input = concat!(
        r#"{"ns":"a","key":"1","value":"one"}"#,
        "\n",
        r#"{"ns":"a","key":"2","value":"two"}"#,
        "\n",
        r#"{"ns":"a","key":"3","value":"#,
        "\n",
        r#"{"ns":"a","key":"4","value":"four"}"#,
        "\n"
    );
    let out = run(&["import", d], input.as_bytes());
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "stderr: {err}");
    assert_eq!(ok(&["get", d, "a", "1"]).stdout, b"one");
    assert_eq!(ok(&["get", d, "a", "2"]).stdout, b"two");
    assert_eq!(run(&["get", d, "a", "4"], b"").status.code(), Some(1));
}

#[test]
fn verify_passes_on_a_clean_database() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    for i in 0..50 {
        let v = format!("value {i} ").repeat(20);
        ok(&["set", d, "ns", &format!("k{i}"), &v, "--ttl", "5m"]);
    }
    ok(&["del", d, "ns", "k7"]);
    let out = ok(&["verify", d]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checked 49 records"), "{text}");
    ok(&["compact", d]);
    ok(&["verify", d]);
}

/// Parses the hot percentage out of "first second: hot x %, ...".
fn first_second_hot(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("first second:"))
        .unwrap_or_else(|| panic!("no first-second line in:\n{stdout}"));
    let rest = line
        .split("hot ")
        .nth(1)
        .unwrap_or_else(|| panic!("no hot figure in {line:?}"));
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unparsable hot figure in {line:?}"))
}

#[test]
fn second_demo_run_starts_warm() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    let args = [
        "demo",
        "--dir",
        d,
        "--seconds",
        "2",
        "--threads",
        "2",
        "--markets",
        "2000",
    ];
    let first = ok(&args);
    let first = String::from_utf8_lossy(&first.stdout);
    assert!(first.contains("cold start"), "{first}");
    let second = ok(&args);
    let second = String::from_utf8_lossy(&second.stdout);
    assert!(second.contains("snapshot keys loaded"), "{second}");
    let hot = first_second_hot(&second);
    assert!(
        hot > 0.0,
        "second run's first second had no hot hits:\n{second}"
    );
}

/// The figure that follows `label` in `line` ("opened 3" → 3), commas
/// allowed.
fn figure_after(line: &str, label: &str) -> u64 {
    let rest = line
        .split(label)
        .nth(1)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"));
    rest.trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == ','))
        .next()
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure after {label:?} in {line:?}"))
}

fn line_starting<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"))
}

#[test]
fn demo_loads_through_upstreams_and_rides_out_the_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    let out = ok(&[
        "demo",
        "--dir",
        d,
        "--seconds",
        "4",
        "--threads",
        "2",
        "--markets",
        "2000",
        "--outage",
        "1-2",
    ]);
    let out = String::from_utf8_lossy(&out.stdout);
    // Loading table: columns GETS CALLS SAVED SAVED % ... per namespace.
    let all: Vec<&str> = line_starting(&out, "all ").split_whitespace().collect();
    let num = |s: &str| s.replace(',', "").parse::<f64>().expect("a figure");
    let (gets, calls, saved, saved_pct) = (num(all[1]), num(all[2]), num(all[3]), num(all[4]));
    assert!(gets > 0.0 && calls > 0.0, "{out}");
    assert_eq!(saved, gets - calls, "{out}");
    assert!(
        saved_pct > 50.0,
        "the cache saved too few upstream calls:\n{out}"
    );
    // Markets that do not exist are answered from the negative cache.
    let market: Vec<&str> = line_starting(&out, "market             markets-api ")
        .split_whitespace()
        .collect();
    assert_eq!(market.len(), 10, "{out}");
    assert_eq!(market[1], "markets-api");
    assert!(num(market[9]) > 0.0, "no negative hits:\n{out}");
    // The outage: stale prices served, the prices breaker opened and closed.
    let outage = line_starting(&out, "outage ");
    assert!(outage.contains("prices-api down 1.0-2.0 s"), "{outage}");
    assert!(
        figure_after(outage, ": ") > 0,
        "no stale values served: {outage}"
    );
    let prices = line_starting(&out, "prices-api ");
    assert!(figure_after(prices, "opened ") >= 1, "{prices}");
    assert!(figure_after(prices, "closed ") >= 1, "{prices}");
    assert!(
        prices.contains(" closed "),
        "breaker not closed at the end: {prices}"
    );
    let rpc = line_starting(&out, "rpc ");
    assert_eq!(figure_after(rpc, "opened "), 0, "{rpc}");
}

/// The demo's Redis flags: conflicting or incomplete combinations are
/// clap usage errors, malformed URLs and master names are usage errors
/// that name the flag (and hide a password); none of them touches the
/// data directory or needs a Redis.
#[cfg(feature = "redis")]
#[test]
fn demo_redis_flags_reject_conflicts_and_malformed_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let demo = |extra: &[&str]| {
        let mut cmd = bin();
        for (k, _) in std::env::vars() {
            if k.starts_with("EMBERCACHE_REDIS") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .args(["demo", "--seconds", "1", "--dir", p(&dir)])
            .args(extra)
            .output()
            .expect("run embercache");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--redis",
                "redis://127.0.0.1:1",
                "--redis-cluster",
                "redis://127.0.0.1:2",
            ],
            "cannot be used with",
        ),
        (
            &[
                "--redis-cluster",
                "redis://127.0.0.1:1",
                "--redis-sentinel",
                "redis://127.0.0.1:2",
                "--redis-master",
                "m",
            ],
            "cannot be used with",
        ),
        (
            &["--redis-sentinel", "redis://127.0.0.1:1"],
            "--redis-master",
        ),
        (&["--redis-master", "m"], "--redis-sentinel"),
        (
            &[
                "--redis-cluster",
                "redis://127.0.0.1:1,,redis://127.0.0.1:2",
            ],
            "--redis-cluster: an empty URL",
        ),
        (
            &[
                "--redis-sentinel",
                "redis://:hunter2@[bad",
                "--redis-master",
                "m",
            ],
            "--redis-sentinel: \"redis://:<redacted>@[bad\" is not a Redis URL",
        ),
        (
            &[
                "--redis-sentinel",
                "redis://127.0.0.1:1",
                "--redis-master",
                " ",
            ],
            "--redis-master: \" \"",
        ),
        (
            &["--redis", "localhost:6379"],
            "--redis: \"localhost:6379\" is not a Redis URL",
        ),
    ];
    for (args, expect) in cases {
        let (code, err) = demo(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "{args:?}: {err}");
        assert!(!dir.exists(), "{args:?} created the data directory");
    }
    let help = ok(&["demo", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--redis <URL>",
        "--redis-cluster <URL,URL,...>",
        "--redis-sentinel <URL,URL,...>",
        "--redis-master <NAME>",
        "EMBERCACHE_REDIS_SENTINEL_MASTER_PASSWORD",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
