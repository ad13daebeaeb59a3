//! Snapshots (SPEC §11): the `[snapshot]` section of a service definition,
//! the exclude-glob matcher, snapshot names and the master's schedule.
//! Everything here is pure and table-tested.

use serde::{Deserialize, Serialize};

/// `[snapshot]` of a service definition: how its data is archived.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDef {
    /// `default` (archive the files, SQLite via `VACUUM INTO`) or
    /// `exec:<command>`: run `<command>` with `sh -c` in the container
    /// first (e.g. to dump a database into the volume), then archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Globs relative to each volume's host directory (`*.log`, `cache/**`)
    /// that are left out of the archive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Component whose container runs the exec method; default the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

/// A parsed snapshot method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Default,
    Exec(String),
}

/// Parses `default` | `exec:<command>`.
pub fn parse_method(m: &str) -> Result<Method, String> {
    if m == "default" {
        return Ok(Method::Default);
    }
    match m.strip_prefix("exec:") {
        Some(cmd) if !cmd.trim().is_empty() => {
            if cmd.chars().any(|c| c.is_control() && c != '\t') {
                Err("exec command must not contain control characters".into())
            } else {
                Ok(Method::Exec(cmd.to_string()))
            }
        }
        Some(_) => Err("exec: needs a command, e.g. \"exec:sqlite3 /data/db .dump > /data/dump.sql\"".into()),
        None => Err(format!(
            "unknown method {m:?}: expected \"default\" or \"exec:<command>\""
        )),
    }
}

impl SnapshotDef {
    /// The method after defaults; only meaningful on a validated section.
    pub fn method(&self) -> Method {
        self.method
            .as_deref()
            .and_then(|m| parse_method(m).ok())
            .unwrap_or(Method::Default)
    }
}

/// Checks a glob: relative, no `..`, not empty, balanced brackets.
pub fn check_glob(g: &str) -> Result<(), String> {
    if g.trim().is_empty() {
        return Err("glob must not be empty".into());
    }
    if g.starts_with('/') {
        return Err(format!("{g:?} must be relative to the volume (no leading /)"));
    }
    if g.split('/').any(|s| s == "..") {
        return Err(format!("{g:?} must not contain .."));
    }
    let mut open = false;
    for c in g.chars() {
        match c {
            '[' if open => return Err(format!("{g:?} has a nested [")),
            '[' => open = true,
            ']' => open = false,
            _ => {}
        }
    }
    if open {
        return Err(format!("{g:?} has an unclosed ["));
    }
    Ok(())
}

/// `(field, reason)` of every problem in a `[snapshot]` section;
/// `components` are the names of the service's components.
pub fn validate(s: &SnapshotDef, components: &[&str]) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Some(m) = &s.method
        && let Err(r) = parse_method(m)
    {
        v.push(("snapshot.method".to_string(), r));
    }
    for (i, g) in s.exclude.iter().enumerate() {
        if let Err(r) = check_glob(g) {
            v.push((format!("snapshot.exclude[{i}]"), r));
        }
    }
    if let Some(c) = &s.component {
        if !components.contains(&c.as_str()) {
            v.push((
                "snapshot.component".to_string(),
                format!("no component named {c:?} in this service"),
            ));
        } else if !matches!(s.method(), Method::Exec(_)) {
            v.push((
                "snapshot.component".to_string(),
                "only the exec: method runs in a component".to_string(),
            ));
        }
    }
    v
}

/// Matches `path` (relative, `/`-separated) against `glob`: `*` and `?`
/// within one path segment, `[abc]`/`[a-z]`/`[!a]` classes, `**` for any
/// number of segments. A glob without `/` matches the file name at any
/// depth (`*.log` excludes `a/b/c.log`); a match on a directory excludes
/// everything under it.
pub fn glob_matches(glob: &str, path: &str) -> bool {
    let g: Vec<&str> = glob.trim_end_matches('/').split('/').collect();
    let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if !glob.contains('/') {
        return p.iter().any(|seg| segment_matches(glob, seg));
    }
    // Prefixes of the path count too: excluding a directory excludes its tree.
    (1..=p.len()).any(|n| segments_match(&g, &p[..n]))
}

fn segments_match(g: &[&str], p: &[&str]) -> bool {
    match g.split_first() {
        None => p.is_empty(),
        Some((&"**", rest)) => (0..=p.len()).any(|i| segments_match(rest, &p[i..])),
        Some((first, rest)) => match p.split_first() {
            Some((seg, prest)) => segment_matches(first, seg) && segments_match(rest, prest),
            None => false,
        },
    }
}

fn segment_matches(glob: &str, s: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let s: Vec<char> = s.chars().collect();
    match_chars(&g, &s)
}

fn match_chars(g: &[char], s: &[char]) -> bool {
    match g.first() {
        None => s.is_empty(),
        Some('*') => (0..=s.len()).any(|i| match_chars(&g[1..], &s[i..])),
        Some('?') => !s.is_empty() && match_chars(&g[1..], &s[1..]),
        Some('[') => {
            let Some(end) = g.iter().position(|&c| c == ']') else {
                return !s.is_empty() && s[0] == '[' && match_chars(&g[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let class = &g[1..end];
            let (negate, class) = match class.first() {
                Some('!') | Some('^') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && match_chars(&g[end + 1..], &s[1..])
        }
        Some(&c) => !s.is_empty() && s[0] == c && match_chars(&g[1..], &s[1..]),
    }
}

/// Name of a snapshot taken at `unix_ms`: `20261125T153000.123Z` (UTC),
/// which sorts like time and is safe in a file name.
pub fn snapshot_name(unix_ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Checks a `--at` selector: digits, `T`, `.`, `Z`, nothing else.
pub fn check_selector(at: &str) -> Result<(), String> {
    if at.is_empty() || at.len() > 20 || !at.chars().all(|c| c.is_ascii_digit() || matches!(c, 'T' | '.' | 'Z')) {
        return Err(format!(
            "{at:?} is not a snapshot name or a prefix of one (e.g. 20261125T1530)"
        ));
    }
    Ok(())
}

/// The newest of `names` that starts with `at` (all when `at` is empty).
pub fn select<'a>(names: &'a [String], at: &str) -> Option<&'a String> {
    names.iter().filter(|n| n.starts_with(at)).max()
}

/// Parses a schedule: `off`, `hourly`, `daily`, `weekly`, or `<n>s|m|h|d`;
/// returns the interval in seconds (`None` for off).
pub fn parse_schedule(s: &str) -> Result<Option<u64>, String> {
    match s {
        "off" => return Ok(None),
        "hourly" => return Ok(Some(3600)),
        "daily" => return Ok(Some(86_400)),
        "weekly" => return Ok(Some(7 * 86_400)),
        _ => {}
    }
    let bad = || format!("{s:?} is not a schedule: expected off, hourly, daily, weekly or <n>s|m|h|d (e.g. 6h)");
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(format!("{s:?}: the interval must be positive (use \"off\" to disable)"));
    }
    if n * mult < 60 {
        return Err(format!("{s:?}: snapshots can run at most once a minute"));
    }
    Ok(Some(n * mult))
}

/// Retention: of `names` (any order), the ones to delete so the newest
/// `keep` remain.
pub fn prune(names: &[String], keep: usize) -> Vec<String> {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    let excess = sorted.len().saturating_sub(keep);
    sorted.into_iter().take(excess).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        let cases: &[(&str, Result<Method, &str>)] = &[
            ("default", Ok(Method::Default)),
            (
                "exec:pg_dump -f /data/dump.sql",
                Ok(Method::Exec("pg_dump -f /data/dump.sql".into())),
            ),
            ("exec:", Err("needs a command")),
            ("exec:   ", Err("needs a command")),
            ("exec:a\nb", Err("control characters")),
            ("copy", Err("unknown method")),
            ("", Err("unknown method")),
        ];
        for (m, want) in cases {
            match (parse_method(m), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{m:?}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{m:?}: {got}"),
                (got, w) => panic!("{m:?}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn validation() {
        let comps = ["api", "db"];
        let def = |method: Option<&str>, exclude: &[&str], component: Option<&str>| SnapshotDef {
            method: method.map(str::to_string),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            component: component.map(str::to_string),
        };
        let cases: Vec<(SnapshotDef, Vec<(&str, &str)>)> = vec![
            (def(None, &[], None), vec![]),
            (def(Some("default"), &["*.log", "cache/**", "tmp/[a-z]*"], None), vec![]),
            (def(Some("exec:true"), &[], Some("db")), vec![]),
            (
                def(Some("rsync"), &[], None),
                vec![("snapshot.method", "unknown method")],
            ),
            (def(None, &["/abs"], None), vec![("snapshot.exclude[0]", "relative")]),
            (def(None, &["ok", "../up"], None), vec![("snapshot.exclude[1]", "..")]),
            (def(None, &[""], None), vec![("snapshot.exclude[0]", "empty")]),
            (def(None, &["a[b"], None), vec![("snapshot.exclude[0]", "unclosed")]),
            (
                def(Some("exec:x"), &[], Some("web")),
                vec![("snapshot.component", "no component")],
            ),
            (
                def(None, &[], Some("db")),
                vec![("snapshot.component", "only the exec")],
            ),
        ];
        for (d, want) in cases {
            let got = validate(&d, &comps);
            assert_eq!(got.len(), want.len(), "{d:?}: {got:?}");
            for (f, frag) in want {
                assert!(got.iter().any(|(gf, r)| gf == f && r.contains(frag)), "{d:?}: {got:?}");
            }
        }
    }

    #[test]
    fn globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.log", "app.log", true),
            ("*.log", "logs/deep/app.log", true),
            ("*.log", "app.log.1", false),
            ("cache", "cache/x/y", true),
            ("cache", "notcache/x", false),
            ("cache/**", "cache/x/y", true),
            ("cache/**", "cache", true),
            ("cache/*.tmp", "cache/a.tmp", true),
            ("cache/*.tmp", "cache/sub/a.tmp", false),
            ("**/*.tmp", "a/b/c.tmp", true),
            ("**/*.tmp", "c.tmp", true),
            ("data/?.db", "data/a.db", true),
            ("data/?.db", "data/ab.db", false),
            ("[a-c]*.bin", "b1.bin", true),
            ("[a-c]*.bin", "d1.bin", false),
            ("[!a]x", "bx", true),
            ("[!a]x", "ax", false),
            ("tmp/", "tmp/file", true),
            ("a/b", "a/b/c/d", true),
            ("a/b", "a/bc", false),
        ];
        for (g, p, want) in cases {
            assert_eq!(glob_matches(g, p), *want, "glob {g:?} path {p:?}");
        }
    }

    #[test]
    fn names_and_selection() {
        assert_eq!(snapshot_name(0), "19700101T000000.000Z");
        assert_eq!(snapshot_name(1_764_084_600_123), "20251125T153000.123Z");
        let names: Vec<String> = ["20251125T153000.123Z", "20251125T160000.000Z", "20251126T010000.000Z"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cases: &[(&str, Option<&str>)] = &[
            ("", Some("20251126T010000.000Z")),
            ("20251125", Some("20251125T160000.000Z")),
            ("20251125T15", Some("20251125T153000.123Z")),
            ("2024", None),
        ];
        for (at, want) in cases {
            assert_eq!(select(&names, at).map(String::as_str), *want, "{at:?}");
        }
        for ok in ["20251125", "20251125T153000.123Z"] {
            assert!(check_selector(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "2025-11-25", "latest"] {
            assert!(check_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedules() {
        let cases: &[(&str, Result<Option<u64>, &str>)] = &[
            ("off", Ok(None)),
            ("hourly", Ok(Some(3600))),
            ("daily", Ok(Some(86_400))),
            ("weekly", Ok(Some(604_800))),
            ("6h", Ok(Some(21_600))),
            ("90m", Ok(Some(5400))),
            ("2d", Ok(Some(172_800))),
            ("120s", Ok(Some(120))),
            ("10s", Err("at most once a minute")),
            ("0h", Err("positive")),
            ("h", Err("not a schedule")),
            ("6x", Err("not a schedule")),
            ("", Err("not a schedule")),
            ("nightly", Err("not a schedule")),
        ];
        for (s, want) in cases {
            match (parse_schedule(s), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{s:?}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{s:?}: {got}"),
                (got, w) => panic!("{s:?}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn retention() {
        let names: Vec<String> = (1..=9).map(|i| format!("2025112{i}T000000.000Z")).collect();
        let pruned = prune(&names, 7);
        assert_eq!(pruned, vec![names[0].clone(), names[1].clone()]);
        assert!(prune(&names[..3], 7).is_empty());
        assert_eq!(prune(&names, 0).len(), 9);
    }
}
