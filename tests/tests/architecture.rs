//! Architecture invariants of the workspace, checked from the sources and from
//! `cargo metadata` (std + serde_json only; runs in well under a second):
//!
//! 1. module cycles: no import cycle between the files (modules) of any crate;
//!    the same graph as `shared/tools/modcycles.py`, minus comments, string
//!    literals and `#[cfg(test)]` modules.
//! 2. crate dependencies: `CLOSURE_BANS` (no IO crate anywhere in the pure
//!    model's normal-dependency closure, no SQLite in the CLI) and `LAYERS`
//!    (which workspace crate may depend on which).
//! 3. confined paths: `CONFINED` (e.g. `bollard::` only in the podman runtime).
//! 4. `docs/architecture.md` names every workspace crate directory.
//!
//! The rules are the tables just below: edit them when the layout changes.
//! Every checker function takes its table as an argument, and `checker_tests`
//! at the bottom shows each check failing on small synthetic inputs.
//! Check another tree: `ARCH_ROOT=/path/to/ws cargo test -p mcp-tests --test architecture`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------
// Rule tables
// ---------------------------------------------------------------------------

/// (package, its directory under the workspace root, the workspace crates it
/// may depend on through any kind of dependency: normal, dev or build).
pub type Layer = (&'static str, &'static str, &'static [&'static str]);
/// (crate, packages that must not be in its normal-dependency closure, what to do instead).
pub type ClosureBan = (&'static str, &'static [&'static str], &'static str);
/// (path pattern, root-relative file globs where it may appear, what to do instead).
/// `*` matches within one path segment, `**` any number of segments.
pub type Confined = (&'static str, &'static [&'static str], &'static str);

/// Rule 2c. A workspace crate without a row, a row without a crate, or an
/// edge between workspace crates that is not listed is a violation.
pub const LAYERS: &[Layer] = &[
    ("mcp-model", "model", &[]),
    ("mcp-proto", "proto", &["mcp-model"]),
    ("mcp-infra", "infra", &["mcp-model"]),
    ("mcp-store", "store", &["mcp-infra"]),
    // The built-in proxy knows nothing of the agent that feeds it.
    ("mcp-proxy", "proxy", &["mcp-infra"]),
    (
        "mcp-agent",
        "agent",
        &["mcp-model", "mcp-proto", "mcp-infra", "mcp-store", "mcp-proxy"],
    ),
    (
        "mcp-master",
        "master",
        &["mcp-model", "mcp-proto", "mcp-infra", "mcp-store"],
    ),
    // Not mcp-store: the CLI never opens a database (see CLOSURE_BANS).
    ("mcp-cli", "cli", &["mcp-model", "mcp-proto", "mcp-infra"]),
    (
        "mcp-tests",
        "tests",
        &[
            "mcp-model",
            "mcp-proto",
            "mcp-infra",
            "mcp-store",
            "mcp-proxy",
            "mcp-agent",
            "mcp-master",
            "mcp-cli",
        ],
    ),
];

/// Crates that do IO (sockets, files through SQLite, podman, SSH) or carry wire types.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tonic",
    "rustls",
    "tokio-rustls",
    "rusqlite",
    "libsqlite3-sys",
    "bollard",
    "hyper",
    "hyper-util",
    "mio",
    "socket2",
    "reqwest",
    "russh",
    "prost",
];

/// Rules 2a and 2b: normal dependencies, direct or transitive (dev and build
/// dependencies are not followed).
pub const CLOSURE_BANS: &[ClosureBan] = &[
    (
        "mcp-model",
        IO_CRATES,
        "mcp-model is pure (no IO, no wire types): move the code that needs it to mcp-infra, mcp-proto or a crate above",
    ),
    (
        "mcp-cli",
        &["rusqlite", "libsqlite3-sys"],
        "the CLI must not link SQLite: drop the dependency that brings it (e.g. mcp-store) and ask the master or an agent",
    ),
];

/// Where the wire types may be named: the proto crate, each binary's gRPC edge, tests.
const GRPC_EDGES: &[&str] = &[
    "proto/**",
    "agent/src/rpc/**",
    "master/src/rpc/**",
    "cli/src/client/**",
    "tests/**",
    "*/tests/**",
];
const WIRE_TYPES: &str =
    "wire types stay at the gRPC edge: convert with mcp_proto::convert there and pass model types inward";

/// Rule 3. Patterns match whole identifiers (`proto::` does not match `mcp_proto::`),
/// outside comments, string literals and `#[cfg(test)]` modules.
pub const CONFINED: &[Confined] = &[
    ("mcp_proto", GRPC_EDGES, WIRE_TYPES),
    ("proto::", GRPC_EDGES, WIRE_TYPES),
    ("prost::", GRPC_EDGES, WIRE_TYPES),
    ("prost_types::", GRPC_EDGES, WIRE_TYPES),
    (
        "bollard::",
        &["agent/src/runtime/podman.rs"],
        "only the podman runtime talks to podman: add a method there",
    ),
    (
        "rusqlite::",
        &[
            "store/**",
            "agent/src/registry.rs",
            // Service databases copied with VACUUM INTO for snapshots.
            "agent/src/snapshot/archive.rs",
            "agent/src/registry/**",
            "master/src/db.rs",
            "master/src/db/**",
            "tests/**",
        ],
        "SQL stays in mcp-store and the two database modules: add a method there",
    ),
    (
        "russh::",
        &["cli/src/ssh.rs", "tests/**"],
        "SSH stays in cli/src/ssh.rs: add a function there",
    ),
    (
        "hickory_server::",
        &["master/src/dns.rs", "master/src/dns/**"],
        "the DNS server stays in master/src/dns",
    ),
];

/// Rule 4: the newcomer map that must name every workspace crate directory.
pub const ARCH_DOC: &str = "docs/architecture.md";

// ---------------------------------------------------------------------------
// The checks on the real workspace
// ---------------------------------------------------------------------------

/// The workspace root: `ARCH_ROOT`, else the parent of this crate (`tests/`).
pub fn workspace_root() -> PathBuf {
    match std::env::var_os("ARCH_ROOT") {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// Panics with every violation, one per line, if there is any.
pub fn assert_clean(rule: &str, violations: &[String]) {
    if !violations.is_empty() {
        panic!(
            "{} violation(s) of {rule}:\n  {}\n",
            violations.len(),
            violations.join("\n  ")
        );
    }
}

/// Rule 1 on the workspace at `root`: one message per cycle.
pub fn check_module_cycles(root: &Path) -> Vec<String> {
    let dirs = match workspace_member_dirs(root) {
        Ok(dirs) => dirs,
        Err(e) => return vec![format!("module cycles: cannot list the workspace crates: {e}")],
    };
    let mut out = vec![];
    for dir in dirs {
        let src = root.join(&dir).join("src");
        if !src.is_dir() {
            continue;
        }
        let files: Vec<(String, String)> = rust_files(&src)
            .into_iter()
            .map(|(rel, path)| (rel, read_lossy(&path)))
            .collect();
        let src_rel = join_rel(&dir, "src");
        for cycle in module_cycles(&files) {
            let edges: Vec<String> = cycle
                .edges
                .iter()
                .map(|(from, to, file, line)| format!("{from} -> {to} ({}:{line})", join_rel(&src_rel, file)))
                .collect();
            out.push(format!(
                "module cycles: {src_rel}: {} modules in a cycle: {}; edges: {}; break it by moving what both sides \
                 need into a module neither imports, or by inverting one edge",
                cycle.modules.len(),
                cycle.modules.join(", "),
                edges.join(", ")
            ));
        }
    }
    out
}

/// Rule 2 on the workspace at `root`: bans and layering from one `cargo metadata`.
pub fn check_dependencies(root: &Path, bans: &[ClosureBan], layers: &[Layer]) -> Vec<String> {
    let graph = match load_dep_graph(root) {
        Ok(graph) => graph,
        Err(e) => return vec![format!("crate dependencies: cannot be checked: {e}")],
    };
    if let Some(why) = &graph.fallback {
        eprintln!(
            "WARNING: {why}\nWARNING: the dependency rules use `cargo metadata --no-deps` and Cargo.lock instead, an \
             over-approximation (every platform and feature, build dependencies included): a chain reported below may \
             not exist in a real build; run `cargo fetch` and rerun to confirm."
        );
    }
    let mut out = check_closure_bans(&graph, bans);
    out.extend(check_layers(&graph, layers));
    out
}

/// Rule 3 on the workspace at `root`: every `.rs` file outside `target/` and hidden directories.
pub fn check_confined(root: &Path, rules: &[Confined]) -> Vec<String> {
    let files: Vec<(String, String)> = rust_files(root)
        .into_iter()
        .map(|(rel, path)| (rel, read_lossy(&path)))
        .collect();
    confined_violations(&files, rules)
}

/// Rule 4 on the workspace at `root`.
pub fn check_doc(root: &Path, doc: &str) -> Vec<String> {
    let dirs = match workspace_member_dirs(root) {
        Ok(dirs) => dirs,
        Err(e) => return vec![format!("architecture doc: cannot list the workspace crates: {e}")],
    };
    match fs::read_to_string(root.join(doc)) {
        Ok(text) => doc_violations(doc, &text, &dirs),
        Err(e) => vec![format!(
            "architecture doc: cannot read {doc}: {e}; write the code map there"
        )],
    }
}

// ---------------------------------------------------------------------------
// Source scanning: comments, literals and test code blanked out
// ---------------------------------------------------------------------------

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// `src` with comments and string, byte-string and char literals replaced by
/// spaces; newlines are kept, so line numbers stay valid. Lifetimes and raw
/// identifiers are kept.
pub fn blank_comments_and_literals(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, range: &[char]| {
        out.extend(range.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < c.len() {
        let end = if c[i] == '/' && at(i + 1) == '/' {
            (i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len())
        } else if c[i] == '/' && at(i + 1) == '*' {
            let (mut k, mut depth) = (i, 0usize);
            loop {
                if k >= c.len() {
                    break c.len();
                } else if c[k] == '/' && at(k + 1) == '*' {
                    depth += 1;
                    k += 2;
                } else if c[k] == '*' && at(k + 1) == '/' {
                    depth -= 1;
                    k += 2;
                    if depth == 0 {
                        break k;
                    }
                } else {
                    k += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&c, i) {
            end
        } else if c[i] == '"' {
            let mut k = i + 1;
            while k < c.len() && c[k] != '"' {
                k += if c[k] == '\\' { 2 } else { 1 };
            }
            (k + 1).min(c.len())
        } else if c[i] == '\'' && at(i + 1) == '\\' {
            // '\n', '\'', '\\', '\u{1F600}'
            let close = (i + 3..c.len())
                .find(|&k| c[k] == '\'' || c[k] == '\n')
                .unwrap_or(c.len());
            (close + 1).min(c.len())
        } else if c[i] == '\'' && at(i + 2) == '\'' && at(i + 1) != '\n' {
            i + 3
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        };
        blank(&mut out, &c[i..end]);
        i = end;
    }
    out
}

/// End (exclusive) of the raw string literal (`r"…"`, `br#"…"#`, `cr"…"`) whose `r` is at `i`.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    if c[i] != 'r' {
        return None;
    }
    let starts_token = |k: usize| k == 0 || !is_ident_char(c[k - 1]);
    if !(starts_token(i) || (matches!(c[i - 1], 'b' | 'c') && starts_token(i - 1))) {
        return None;
    }
    let mut k = i + 1;
    while c.get(k) == Some(&'#') {
        k += 1;
    }
    if c.get(k) != Some(&'"') {
        return None; // r#ident or a plain identifier
    }
    let hashes = k - i - 1;
    k += 1;
    while k < c.len() {
        if c[k] == '"' && (1..=hashes).all(|h| c.get(k + h) == Some(&'#')) {
            return Some(k + 1 + hashes);
        }
        k += 1;
    }
    Some(c.len())
}

/// Blanks `#[cfg(test)]` modules (inline `mod x { .. }` blocks and `mod x;`
/// declarations) and `#[cfg(test)]` `use` declarations in code whose comments
/// and literals are already blanked. Returns the text and the names of the
/// test modules declared out of line (their files are test code too).
pub fn blank_test_code(code: &str) -> (String, Vec<String>) {
    let c: Vec<char> = code.chars().collect();
    let mut out = c.clone();
    let mut names = vec![];
    let mut i = 0;
    while i < c.len() {
        let item = match c[i] {
            '#' => match_tokens(&c, i, &["#", "[", "cfg", "(", "test", ")", "]"]).and_then(|k| test_item_end(&c, k)),
            _ => None,
        };
        if let Some((end, name)) = item {
            names.extend(name);
            for ch in &mut out[i..end] {
                if *ch != '\n' {
                    *ch = ' ';
                }
            }
            i = end;
            continue;
        }
        i += 1;
    }
    (out.into_iter().collect(), names)
}

/// After `#[cfg(test)]`: the end of a following `mod` or `use` item, and the
/// module name if it is a `mod x;` declaration.
fn test_item_end(c: &[char], mut j: usize) -> Option<(usize, Option<String>)> {
    j = skip_ws(c, j);
    while c.get(j) == Some(&'#') {
        j = skip_ws(c, matching(c, skip_ws(c, j + 1), '[', ']')? + 1);
    }
    if let Some(k) = match_tokens(c, j, &["pub"]) {
        j = skip_ws(c, k);
        if c.get(j) == Some(&'(') {
            j = skip_ws(c, matching(c, j, '(', ')')? + 1);
        }
    }
    if let Some(k) = match_tokens(c, j, &["mod"]) {
        let start = skip_ws(c, k);
        let stop = (start..c.len()).find(|&n| !is_ident_char(c[n])).unwrap_or(c.len());
        let name: String = c[start..stop].iter().collect();
        let k = skip_ws(c, stop);
        return match c.get(k) {
            Some('{') => Some((matching(c, k, '{', '}')? + 1, None)),
            Some(';') => Some((k + 1, Some(name))),
            _ => None,
        };
    }
    if match_tokens(c, j, &["use"]).is_some() {
        return Some(((j..c.len()).find(|&n| c[n] == ';')? + 1, None));
    }
    None
}

fn skip_ws(c: &[char], mut i: usize) -> usize {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Matches `tokens` from `i`, whitespace allowed between them; the end on success.
fn match_tokens(c: &[char], mut i: usize, tokens: &[&str]) -> Option<usize> {
    for token in tokens {
        i = skip_ws(c, i);
        for ch in token.chars() {
            if c.get(i) != Some(&ch) {
                return None;
            }
            i += 1;
        }
        if token.chars().all(is_ident_char) && c.get(i).is_some_and(|&ch| is_ident_char(ch)) {
            return None;
        }
    }
    Some(i)
}

/// Index of the bracket closing the one at `open`.
fn matching(c: &[char], open: usize, left: char, right: char) -> Option<usize> {
    if c.get(open) != Some(&left) {
        return None;
    }
    let mut depth = 0usize;
    for (k, &ch) in c.iter().enumerate().skip(open) {
        if ch == left {
            depth += 1;
        } else if ch == right {
            depth -= 1;
            if depth == 0 {
                return Some(k);
            }
        }
    }
    None
}

/// Comments, literals and `#[cfg(test)]` code blanked; plus the declared test modules.
pub fn production_code(src: &str) -> (String, Vec<String>) {
    blank_test_code(&blank_comments_and_literals(src))
}

/// Root-relative paths of the files that are test modules: `tests.rs` under a
/// `src/`, and the files of modules declared `#[cfg(test)] mod x;` (with their
/// submodules). `files`: (root-relative path, declared test modules).
pub fn test_module_files(files: &[(String, Vec<String>)]) -> BTreeSet<String> {
    let mut prefixes = vec![];
    for (rel, test_mods) in files {
        let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
        let stem = file.trim_end_matches(".rs");
        let children_dir = if matches!(file, "mod.rs" | "lib.rs" | "main.rs") {
            dir.to_string()
        } else {
            join_rel(dir, stem)
        };
        for name in test_mods {
            let base = join_rel(&children_dir, name);
            prefixes.push(format!("{base}.rs"));
            prefixes.push(format!("{base}/"));
        }
    }
    files
        .iter()
        .map(|(rel, _)| rel)
        .filter(|rel| {
            let in_src = rel.starts_with("src/") || rel.contains("/src/");
            (in_src && (rel.ends_with("/tests.rs") || rel.as_str() == "tests.rs"))
                || prefixes.iter().any(|p| {
                    if p.ends_with('/') {
                        rel.starts_with(p.as_str())
                    } else {
                        *rel == p
                    }
                })
        })
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// Rule 1: module import cycles
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Semi,
    Other,
}

/// Tokens of blanked code, each with its line.
fn tokenize(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let (mut out, mut i, mut line) = (vec![], 0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if is_ident_char(ch) {
            let mut start = i;
            if ch == 'r' && c.get(i + 1) == Some(&'#') && c.get(i + 2).is_some_and(|&n| is_ident_char(n)) {
                start = i + 2; // r#ident
            }
            let end = (start..c.len()).find(|&k| !is_ident_char(c[k])).unwrap_or(c.len());
            let word: String = c[start..end].iter().collect();
            out.push((
                if ch.is_ascii_digit() {
                    Tok::Other
                } else {
                    Tok::Ident(word)
                },
                line,
            ));
            i = end;
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            let tok = match ch {
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                '*' => Tok::Star,
                ';' => Tok::Semi,
                _ => Tok::Other,
            };
            out.push((tok, line));
            i += 1;
        }
    }
    out
}

/// Every `crate::`, `self::` and `super::` path in blanked code, `use` groups
/// expanded (`crate::{a, b::{self, c}}` gives `a`, `b`, `b::c`), made absolute
/// from the crate root, with its line. `module` is the file's module path;
/// inline `mod x { .. }` blocks shift `self` and `super` as rustc does.
pub fn crate_paths(module: &[String], code: &str) -> Vec<(Vec<String>, usize)> {
    let toks = tokenize(code);
    let kind = |k: usize| toks.get(k).map(|t| &t.0);
    let (mut out, mut depth, mut inline, mut pending) = (vec![], 0usize, Vec::<(String, usize)>::new(), None);
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Ident(w) if w == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Open)) = (kind(i + 1), kind(i + 2)) {
                    pending = Some(name.clone());
                }
            }
            Tok::Open => {
                depth += 1;
                if let Some(name) = pending.take() {
                    inline.push((name, depth));
                }
            }
            Tok::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(w)
                if matches!(w.as_str(), "crate" | "self" | "super")
                    && kind(i + 1) == Some(&Tok::PathSep)
                    && (i == 0 || toks[i - 1].0 != Tok::PathSep) =>
            {
                let mut paths = vec![];
                let next = use_tree(&toks, i, vec![], &mut paths);
                let current: Vec<String> = module
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(n, _)| n.clone()))
                    .collect();
                out.extend(
                    paths
                        .into_iter()
                        .filter_map(|(p, line)| Some((absolute(&current, &p)?, line))),
                );
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Parses a path or `use` tree from `i`, pushing each leaf path; returns the next index.
fn use_tree(t: &[(Tok, usize)], mut i: usize, mut segs: Vec<String>, out: &mut Vec<(Vec<String>, usize)>) -> usize {
    loop {
        match t.get(i).map(|x| &x.0) {
            Some(Tok::Ident(w)) => {
                segs.push(w.clone());
                i += 1;
                if t.get(i).map(|x| &x.0) == Some(&Tok::PathSep) {
                    i += 1;
                    continue;
                }
                out.push((segs, t[i - 1].1));
                return i;
            }
            Some(Tok::Open) => {
                i += 1;
                loop {
                    match t.get(i).map(|x| &x.0) {
                        None | Some(Tok::Semi) => return i,
                        Some(Tok::Close) => return i + 1,
                        Some(Tok::Comma) => i += 1,
                        _ => i = skip_to_comma_or_close(t, use_tree(t, i, segs.clone(), out)),
                    }
                }
            }
            Some(Tok::Star) => {
                out.push((segs, t[i].1));
                return i + 1;
            }
            _ => {
                if !segs.is_empty() {
                    out.push((segs, t[i.saturating_sub(1)].1));
                }
                return i;
            }
        }
    }
}

/// Skips an alias or anything odd up to the `,` or `}` that ends a group item.
fn skip_to_comma_or_close(t: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0usize;
    while let Some((tok, _)) = t.get(i) {
        match tok {
            Tok::Open => depth += 1,
            Tok::Close if depth == 0 => return i,
            Tok::Close => depth -= 1,
            Tok::Comma | Tok::Semi if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

/// `segs` (starting with `crate`, `self` or `super`) as a path from the crate root.
fn absolute(current: &[String], segs: &[String]) -> Option<Vec<String>> {
    let (mut base, mut k) = match segs.first()?.as_str() {
        "crate" => (vec![], 1),
        "self" => (current.to_vec(), 1),
        "super" => (current.to_vec(), 0),
        _ => return None,
    };
    while segs.get(k).map(String::as_str) == Some("super") {
        base.pop()?;
        k += 1;
    }
    base.extend(segs[k..].iter().filter(|s| *s != "self").cloned());
    Some(base)
}

/// The module path of a file under `src/` (`a/b.rs` and `a/b/mod.rs` are
/// `a::b`, `lib.rs` and `main.rs` the root); `None` for `bin/**`.
pub fn module_path(rel: &str) -> Option<Vec<String>> {
    let rel = rel.strip_suffix(".rs")?;
    let mut parts: Vec<String> = rel.split('/').map(String::from).collect();
    if parts.len() > 1 && parts[0] == "bin" {
        return None;
    }
    if parts.len() == 1 && matches!(parts[0].as_str(), "lib" | "main") || parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts)
}

/// A strongly connected component of a crate's module graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Cycle {
    /// Members, sorted, as `a::b`.
    pub modules: Vec<String>,
    /// (from, to, file relative to `src/`, line of the first reference).
    pub edges: Vec<(String, String, String, usize)>,
}

/// The cycles of one crate. `files`: (path relative to its `src/`, source).
/// Edges come from `crate::`/`self::`/`super::` paths, resolved to the longest
/// existing module prefix; references to the file's own ancestors are ignored,
/// as are comments, literals, `#[cfg(test)]` modules and test module files.
pub fn module_cycles(files: &[(String, String)]) -> Vec<Cycle> {
    let graph = module_graph(files);
    let adjacency: BTreeMap<String, Vec<String>> = graph
        .iter()
        .map(|(from, to)| (from.clone(), to.keys().cloned().collect()))
        .collect();
    strongly_connected(&adjacency)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| {
            let members: BTreeSet<&String> = scc.iter().collect();
            let mut edges = vec![];
            for from in &scc {
                for (to, (file, line)) in &graph[from] {
                    if members.contains(to) {
                        edges.push((from.clone(), to.clone(), file.clone(), *line));
                    }
                }
            }
            Cycle { modules: scc, edges }
        })
        .collect()
}

/// A crate's module graph: module -> module it uses -> (file relative to `src/`,
/// line of the first use). Modules are named `a::b`, the root `crate`.
pub fn module_graph(files: &[(String, String)]) -> BTreeMap<String, BTreeMap<String, (String, usize)>> {
    let mut code = BTreeMap::new();
    let mut declared = vec![];
    for (rel, src) in files {
        let Some(module) = module_path(rel) else { continue };
        let (text, test_mods) = production_code(src);
        declared.push((format!("src/{rel}"), test_mods));
        code.entry(module).or_insert_with(Vec::new).push((rel.clone(), text));
    }
    let tests = test_module_files(&declared);
    code.retain(|_, files| {
        files.retain(|(rel, _)| !tests.contains(&format!("src/{rel}")));
        !files.is_empty()
    });
    let modules: BTreeSet<Vec<String>> = code.keys().cloned().collect();
    let name = |m: &[String]| {
        if m.is_empty() {
            "crate".to_string()
        } else {
            m.join("::")
        }
    };
    // from -> to -> (file, line) of the first reference
    let mut graph: BTreeMap<String, BTreeMap<String, (String, usize)>> = BTreeMap::new();
    for (module, files) in &code {
        let edges = graph.entry(name(module)).or_default();
        for (rel, text) in files {
            for (path, line) in crate_paths(module, text) {
                let Some(target) = (1..=path.len())
                    .rev()
                    .map(|n| &path[..n])
                    .find(|p| modules.contains(*p))
                else {
                    continue;
                };
                if !module.starts_with(target) {
                    edges.entry(name(target)).or_insert_with(|| (rel.clone(), line));
                }
            }
        }
    }
    graph
}

/// Tarjan's strongly connected components, each sorted, in a stable order.
pub fn strongly_connected(graph: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, Vec<String>>,
        index: BTreeMap<&'a str, (usize, usize)>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, (n, n));
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let low = s.index[w.as_str()].1.min(s.index[v].1);
                s.index.get_mut(v).expect("visited").1 = low;
            } else if s.on_stack.contains(w.as_str()) {
                let low = s.index[w.as_str()].0.min(s.index[v].1);
                s.index.get_mut(v).expect("visited").1 = low;
            }
        }
        if s.index[v].0 == s.index[v].1 {
            let mut scc = vec![];
            loop {
                let w = s.stack.pop().expect("v is on the stack");
                s.on_stack.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            scc.sort();
            s.out.push(scc);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        stack: vec![],
        on_stack: BTreeSet::new(),
        out: vec![],
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

// ---------------------------------------------------------------------------
// Rule 2: crate dependencies
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DepKind {
    Normal,
    Dev,
    Build,
    /// From Cargo.lock (fallback): kind unknown, followed like a normal dependency.
    Lock,
}

/// The package graph of a workspace.
#[derive(Debug, Default)]
pub struct DepGraph {
    /// package key -> package name
    pub names: BTreeMap<String, String>,
    /// workspace crate name -> (package key, directory relative to the root, "." for the root)
    pub members: BTreeMap<String, (String, String)>,
    /// package key -> its dependencies (key, kind), one entry per kind
    pub deps: BTreeMap<String, Vec<(String, DepKind)>>,
    /// Why `cargo metadata` failed when the graph comes from `--no-deps` + Cargo.lock.
    pub fallback: Option<String>,
}

/// Runs `cargo metadata` once (host platform, offline); if that fails, falls
/// back to `cargo metadata --no-deps` plus Cargo.lock; if that fails too, errs.
pub fn load_dep_graph(root: &Path) -> Result<DepGraph, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = root.join("Cargo.toml");
    let metadata = |extra: &[&str]| -> Result<serde_json::Value, String> {
        let mut cmd = Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
            .arg(&manifest)
            .args(extra);
        let out = cmd.output().map_err(|e| format!("cannot run {cargo}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`{cmd:?}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("`{cmd:?}` printed bad JSON: {e}"))
    };
    // Only the host's packages: the others (windows-sys, wasm-bindgen, …) are
    // never downloaded by a build, so an offline `cargo metadata` would fail.
    let host = host_triple();
    let filter: Vec<&str> = host
        .as_deref()
        .map(|h| vec!["--filter-platform", h])
        .unwrap_or_default();
    match metadata(&filter) {
        Ok(json) => parse_metadata(&json),
        Err(why) => {
            let no_deps = metadata(&["--no-deps"]).map_err(|e| format!("{why}\nand the fallback failed too: {e}"))?;
            let lock = fs::read_to_string(root.join("Cargo.lock"))
                .map_err(|e| format!("{why}\nand the fallback has no Cargo.lock: {e}"))?;
            parse_fallback(&no_deps, &lock, why)
        }
    }
}

fn host_triple() -> Option<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(rustc).arg("-vV").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
}

fn member_dir(workspace_root: &str, manifest_path: &str) -> String {
    let dir = Path::new(manifest_path).parent().unwrap_or(Path::new(""));
    let rel = dir
        .strip_prefix(workspace_root)
        .unwrap_or(dir)
        .to_string_lossy()
        .replace('\\', "/");
    if rel.is_empty() { ".".to_string() } else { rel }
}

fn str_field<'a>(v: &'a serde_json::Value, field: &str) -> Result<&'a str, String> {
    v[field]
        .as_str()
        .ok_or_else(|| format!("cargo metadata: no `{field}` in {}", short(v)))
}

fn short(v: &serde_json::Value) -> String {
    v.to_string().chars().take(120).collect()
}

/// The graph in `cargo metadata --format-version 1` output (with its resolve).
pub fn parse_metadata(v: &serde_json::Value) -> Result<DepGraph, String> {
    let mut g = DepGraph::default();
    let root = str_field(v, "workspace_root")?;
    let packages = v["packages"].as_array().ok_or("cargo metadata: no packages")?;
    let mut manifests = BTreeMap::new();
    for p in packages {
        let id = str_field(p, "id")?;
        g.names.insert(id.to_string(), str_field(p, "name")?.to_string());
        manifests.insert(id, str_field(p, "manifest_path")?);
    }
    for id in v["workspace_members"]
        .as_array()
        .ok_or("cargo metadata: no workspace_members")?
    {
        let id = id.as_str().ok_or("cargo metadata: bad workspace member")?;
        let name = g
            .names
            .get(id)
            .ok_or_else(|| format!("cargo metadata: member {id} is not a package"))?;
        let dir = member_dir(root, manifests.get(id).copied().unwrap_or(""));
        g.members.insert(name.clone(), (id.to_string(), dir));
    }
    let nodes = v["resolve"]["nodes"]
        .as_array()
        .ok_or("cargo metadata: no resolve graph (was --no-deps given?)")?;
    for node in nodes {
        let deps = g.deps.entry(str_field(node, "id")?.to_string()).or_default();
        for d in node["deps"].as_array().into_iter().flatten() {
            let pkg = str_field(d, "pkg")?.to_string();
            match d["dep_kinds"].as_array() {
                Some(kinds) if !kinds.is_empty() => {
                    for k in kinds {
                        let kind = match k["kind"].as_str() {
                            Some("dev") => DepKind::Dev,
                            Some("build") => DepKind::Build,
                            _ => DepKind::Normal,
                        };
                        if !deps.contains(&(pkg.clone(), kind)) {
                            deps.push((pkg.clone(), kind));
                        }
                    }
                }
                _ => deps.push((pkg, DepKind::Normal)), // old cargo: assume the worst
            }
        }
    }
    Ok(g)
}

/// The fallback graph: workspace crates and their direct dependencies (with
/// kinds) from `cargo metadata --no-deps`, everything below from Cargo.lock
/// (kind unknown, followed like normal dependencies: a superset of any build).
pub fn parse_fallback(no_deps: &serde_json::Value, lock: &str, why: String) -> Result<DepGraph, String> {
    let mut g = DepGraph {
        fallback: Some(format!("cargo metadata failed: {why}")),
        ..DepGraph::default()
    };
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, version, deps) in parse_lock(lock) {
        let key = format!("{name} {version}");
        by_name.entry(name.clone()).or_default().push(key.clone());
        g.names.insert(key.clone(), name);
        g.deps
            .insert(key, deps.into_iter().map(|d| (d, DepKind::Lock)).collect());
    }
    // Lock entries name a dependency "name" or "name version [(source)]".
    let keys_of = |dep: &str| -> Vec<String> {
        let mut words = dep.split_whitespace();
        let name = words.next().unwrap_or_default();
        let all = by_name.get(name).cloned().unwrap_or_default();
        match words.next() {
            Some(version) => all
                .into_iter()
                .filter(|k| k.ends_with(&format!(" {version}")))
                .collect(),
            None => all,
        }
    };
    for deps in g.deps.values_mut() {
        *deps = deps
            .iter()
            .flat_map(|(d, kind)| keys_of(d).into_iter().map(move |k| (k, *kind)))
            .collect();
    }
    let root = str_field(no_deps, "workspace_root")?;
    let packages = no_deps["packages"]
        .as_array()
        .ok_or("cargo metadata --no-deps: no packages")?;
    let member_names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    for p in packages {
        let name = str_field(p, "name")?;
        let key = format!("{name} {}", str_field(p, "version")?);
        g.names.insert(key.clone(), name.to_string());
        g.members.insert(
            name.to_string(),
            (key.clone(), member_dir(root, str_field(p, "manifest_path")?)),
        );
        let mut deps = vec![];
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = str_field(d, "name")?;
            let kind = match d["kind"].as_str() {
                Some("dev") => DepKind::Dev,
                Some("build") => DepKind::Build,
                _ => DepKind::Normal,
            };
            let keys = if member_names.contains(dep) && d["source"].is_null() {
                let version = packages
                    .iter()
                    .find(|q| q["name"] == dep)
                    .and_then(|q| q["version"].as_str());
                vec![format!("{dep} {}", version.unwrap_or_default())]
            } else {
                keys_of(dep)
            };
            if keys.is_empty() && !d["optional"].as_bool().unwrap_or(false) {
                return Err(format!(
                    "Cargo.lock has no `{dep}`, a dependency of {name}: the lock file is stale"
                ));
            }
            deps.extend(keys.into_iter().map(|k| (k, kind)));
        }
        g.deps.insert(key, deps); // the --no-deps view replaces the member's lock entry
    }
    Ok(g)
}

/// (name, version, dependency strings) of each `[[package]]` in a Cargo.lock.
pub fn parse_lock(text: &str) -> Vec<(String, String, Vec<String>)> {
    let mut out = vec![];
    for block in text.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                let rest = l.trim().strip_prefix(key)?.trim_start().strip_prefix('=')?;
                Some(rest.trim().trim_matches('"').to_string())
            })
        };
        let (Some(name), Some(version)) = (field("name"), field("version")) else {
            continue;
        };
        let deps = block
            .find("dependencies = [")
            .map(|start| {
                let list = &block[start + "dependencies = [".len()..];
                let list = &list[..list.find(']').unwrap_or(list.len())];
                list.split(',')
                    .map(|d| d.trim().trim_matches('"').to_string())
                    .filter(|d| !d.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        out.push((name, version, deps));
    }
    out
}

/// Shortest chain of normal dependencies from `from` to each package reachable
/// from it: package key -> chain of names.
fn closure_chains(g: &DepGraph, from: &str) -> BTreeMap<String, Vec<String>> {
    let mut parent: BTreeMap<&str, Option<&str>> = BTreeMap::from([(from, None)]);
    let mut queue = VecDeque::from([from]);
    while let Some(key) = queue.pop_front() {
        for (dep, kind) in g.deps.get(key).into_iter().flatten() {
            if matches!(kind, DepKind::Normal | DepKind::Lock) && !parent.contains_key(dep.as_str()) {
                parent.insert(dep, Some(key));
                queue.push_back(dep);
            }
        }
    }
    let name = |k: &str| g.names.get(k).cloned().unwrap_or_else(|| k.to_string());
    parent
        .keys()
        .map(|&key| {
            let (mut chain, mut at) = (vec![], Some(key));
            while let Some(k) = at {
                chain.push(name(k));
                at = parent[k];
            }
            chain.reverse();
            (key.to_string(), chain)
        })
        .collect()
}

/// Rules 2a/2b: one message per banned package found in a crate's closure.
pub fn check_closure_bans(g: &DepGraph, bans: &[ClosureBan]) -> Vec<String> {
    let note = if g.fallback.is_some() {
        " [from Cargo.lock: may over-approximate]"
    } else {
        ""
    };
    let mut out = vec![];
    for (krate, banned, hint) in bans {
        let Some((key, _)) = g.members.get(*krate) else {
            out.push(format!(
                "closure ban: CLOSURE_BANS names `{krate}`, which is not a workspace crate, so nothing is checked \
                 for it: fix the row"
            ));
            continue;
        };
        let mut found: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (dep, chain) in closure_chains(g, key) {
            let dep_name = g.names.get(&dep);
            let Some(name) = banned.iter().copied().find(|b| dep_name.is_some_and(|n| n == b)) else {
                continue;
            };
            if dep != *key {
                let shortest = found.entry(name).or_insert_with(|| chain.clone());
                if chain.len() < shortest.len() {
                    *shortest = chain;
                }
            }
        }
        for (name, chain) in found {
            out.push(format!(
                "closure ban: {krate} must not depend on {name}, even indirectly, but does: {}{note}; {hint}",
                chain.join(" -> ")
            ));
        }
    }
    out
}

/// Rule 2c: workspace crates against the layer table.
pub fn check_layers(g: &DepGraph, layers: &[Layer]) -> Vec<String> {
    let mut out = vec![];
    let table: BTreeMap<&str, (&str, &[&str])> = layers.iter().map(|(n, d, a)| (*n, (*d, *a))).collect();
    let member_of: BTreeMap<&str, &str> = g.members.iter().map(|(n, (k, _))| (k.as_str(), n.as_str())).collect();
    for (name, (key, dir)) in &g.members {
        let Some((want_dir, allowed)) = table.get(name.as_str()) else {
            out.push(format!(
                "layering: workspace crate `{name}` ({dir}/) has no row in LAYERS: add (\"{name}\", \"{dir}\", \
                 &[the workspace crates it may use]) or rename the crate to one of the table's"
            ));
            continue;
        };
        if dir != want_dir {
            out.push(format!(
                "layering: `{name}` lives in {dir}/ but LAYERS says {want_dir}/: move it or fix the row"
            ));
        }
        let mut edges: BTreeMap<&str, BTreeSet<DepKind>> = BTreeMap::new();
        for (dep, kind) in g.deps.get(key).into_iter().flatten() {
            if let Some(dep_name) = member_of.get(dep.as_str()) {
                edges.entry(*dep_name).or_default().insert(*kind);
            }
        }
        for (dep, kinds) in edges {
            if !allowed.contains(&dep) {
                let kinds: Vec<String> = kinds.iter().map(|k| format!("{k:?}").to_lowercase()).collect();
                let allowed = if allowed.is_empty() {
                    "no workspace crate".to_string()
                } else {
                    allowed.join(", ")
                };
                out.push(format!(
                    "layering: {name} -> {dep} ({}) is not allowed; LAYERS lets {name} use: {allowed}; move the code \
                     that needs {dep} into a crate that may use it, or change LAYERS if the layering itself changes",
                    kinds.join(", ")
                ));
            }
        }
    }
    for (name, dir, allowed) in layers {
        if !g.members.contains_key(*name) {
            out.push(format!(
                "layering: LAYERS has a row for `{name}` ({dir}/) but the workspace has no such crate: remove or \
                 rename the row"
            ));
        }
        for a in allowed.iter().filter(|a| !table.contains_key(**a)) {
            out.push(format!(
                "layering: the LAYERS row of {name} allows `{a}`, which has no row of its own"
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Rule 3: confined paths
// ---------------------------------------------------------------------------

/// `*` matches within one `/`-separated segment, `**` any number of segments.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn segments(p: &[&str], s: &[&str]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((&"**", rest)) => (0..=s.len()).any(|k| segments(rest, &s[k..])),
            Some((first, rest)) => {
                !s.is_empty() && segment(first.as_bytes(), s[0].as_bytes()) && segments(rest, &s[1..])
            }
        }
    }
    fn segment(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|k| segment(rest, &s[k..])),
            Some((c, rest)) => s.first() == Some(c) && segment(rest, &s[1..]),
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    segments(&p, &s)
}

/// Line numbers (1-based) where `pattern` occurs in `code` as whole identifiers.
pub fn pattern_lines(code: &str, pattern: &str) -> Vec<usize> {
    let starts_ident = pattern.chars().next().is_some_and(is_ident_char);
    let ends_ident = pattern.chars().last().is_some_and(is_ident_char);
    let mut lines: Vec<usize> = code
        .match_indices(pattern)
        .filter(|(at, _)| {
            let before = code[..*at].chars().next_back();
            let after = code[at + pattern.len()..].chars().next();
            let glued_before = starts_ident && before.is_some_and(is_ident_char);
            !(glued_before || ends_ident && after.is_some_and(is_ident_char) || inside_foreign_path(code, *at))
        })
        .map(|(at, _)| code[..at].matches('\n').count() + 1)
        .collect();
    lines.dedup();
    lines
}

/// Whether the text at `at` continues another crate's path (`hickory_server::proto::…`
/// is hickory's `proto`, not ours); `crate::`, `super::` and `self::` lead to our own.
fn inside_foreign_path(code: &str, at: usize) -> bool {
    let Some(head) = code[..at].strip_suffix("::") else {
        return false;
    };
    let segment: String = head
        .chars()
        .rev()
        .take_while(|c| is_ident_char(*c))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    !segment.is_empty() && !matches!(segment.as_str(), "crate" | "super" | "self")
}

/// Rule 3 over (root-relative path, source) pairs: one message per rule and file.
pub fn confined_violations(files: &[(String, String)], rules: &[Confined]) -> Vec<String> {
    let code: Vec<(String, String, Vec<String>)> = files
        .iter()
        .map(|(rel, src)| {
            let (text, test_mods) = production_code(src);
            (rel.clone(), text, test_mods)
        })
        .collect();
    let tests = test_module_files(&code.iter().map(|(r, _, t)| (r.clone(), t.clone())).collect::<Vec<_>>());
    let mut out = vec![];
    for (pattern, allowed, hint) in rules {
        for (rel, text, _) in &code {
            if tests.contains(rel) || allowed.iter().any(|g| glob_match(g, rel)) {
                continue;
            }
            let lines = pattern_lines(text, pattern);
            if !lines.is_empty() {
                let lines: Vec<String> = lines.iter().map(usize::to_string).collect();
                out.push(format!(
                    "confined path: `{pattern}` in {rel}:{}; it may appear only in {}; {hint}",
                    lines.join(","),
                    allowed.join(" ")
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Rule 4 and the workspace layout
// ---------------------------------------------------------------------------

/// Rule 4 on a document's text: each directory must appear as `` `dir/`` or `` `dir` ``.
pub fn doc_violations(doc: &str, text: &str, dirs: &[String]) -> Vec<String> {
    dirs.iter()
        .filter(|d| d.as_str() != ".")
        .filter(|d| !text.contains(&format!("`{d}/")) && !text.contains(&format!("`{d}`")))
        .map(|d| format!("architecture doc: {doc} never names `{d}/`: add the crate to its code map"))
        .collect()
}

/// Member directories from the root Cargo.toml (`members`, globs expanded,
/// plus "." if the root is a package too), without running cargo.
pub fn workspace_member_dirs(root: &Path) -> Result<Vec<String>, String> {
    let path = root.join("Cargo.toml");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Comments out: a `#` outside a string starts one.
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            let mut in_str = false;
            let end = l.char_indices().find(|&(_, c)| {
                in_str ^= c == '"';
                c == '#' && !in_str
            });
            l[..end.map_or(l.len(), |(k, _)| k)].to_string()
        })
        .collect();
    let mut dirs = vec![];
    if text.iter().any(|l| l.trim() == "[package]") {
        dirs.push(".".to_string());
    }
    let start = text
        .iter()
        .position(|l| {
            l.trim_start()
                .strip_prefix("members")
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .ok_or_else(|| format!("{}: no workspace members", path.display()))?;
    let list = text[start..].join("\n");
    let list = &list[list.find('[').unwrap_or(0)..];
    let list = &list[..list.find(']').unwrap_or(list.len())];
    for member in list
        .split(',')
        .map(|m| m.trim().trim_start_matches('[').trim().trim_matches('"'))
    {
        if member.is_empty() {
            continue;
        }
        if member.contains('*') {
            let (parent, _) = member.rsplit_once('/').unwrap_or((".", member));
            let mut found: Vec<String> = fs::read_dir(root.join(parent))
                .map_err(|e| format!("{member}: {e}"))?
                .flatten()
                .map(|e| {
                    join_rel(parent, &e.file_name().to_string_lossy())
                        .trim_start_matches("./")
                        .to_string()
                })
                .filter(|d| glob_match(member, d) && root.join(d).join("Cargo.toml").is_file())
                .collect();
            found.sort();
            dirs.extend(found);
        } else {
            dirs.push(member.trim_end_matches('/').to_string());
        }
    }
    Ok(dirs)
}

/// `.rs` files under `dir` as (path relative to `dir` with `/`, full path), sorted;
/// skips `target/`, hidden and `node_modules` directories and symlinked directories.
pub fn rust_files(dir: &Path) -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = join_rel(rel, &name);
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    walk(&entry.path(), &rel, out);
                }
            } else if name.ends_with(".rs") && !kind.is_symlink() {
                out.push((rel, entry.path()));
            }
        }
    }
    let mut out = vec![];
    walk(dir, "", &mut out);
    out
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "." {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

// ---------------------------------------------------------------------------
// The tests: one per rule family on this workspace, then the checker's own
// ---------------------------------------------------------------------------

#[test]
fn module_import_cycles() {
    assert_clean("rule 1 (module cycles)", &check_module_cycles(&workspace_root()));
}

#[test]
fn crate_dependencies() {
    assert_clean(
        "rule 2 (crate dependencies)",
        &check_dependencies(&workspace_root(), CLOSURE_BANS, LAYERS),
    );
}

#[test]
fn confined_paths() {
    assert_clean("rule 3 (confined paths)", &check_confined(&workspace_root(), CONFINED));
}

#[test]
fn architecture_doc_names_every_crate() {
    assert_clean("rule 4 (architecture doc)", &check_doc(&workspace_root(), ARCH_DOC));
}

#[cfg(test)]
mod checker_tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn files(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn cycle_members(v: &[(&str, &str)]) -> Vec<Vec<String>> {
        module_cycles(&files(v)).into_iter().map(|c| c.modules).collect()
    }

    #[test]
    fn blanking_keeps_code_and_lines_only() {
        let src = "a // crate::x\nb /* c /* nested */ crate::y */ d\n\"crate::z \\\" q\" e r#\"crate::w\"# f \
                   br##\"x\"#y\"## g '\"' h '\\'' i 'a' <'b> r#type\n";
        let out = blank_comments_and_literals(src);
        assert_eq!(out.lines().count(), src.lines().count());
        assert!(!out.contains("crate"), "{out}");
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words, ["a", "b", "d", "e", "f", "b", "g", "h", "i", "<'b>", "r#type"]);
    }

    #[test]
    fn test_modules_are_blanked_and_declared_ones_named() {
        let src = "use crate::a;\n#[cfg(test)]\nmod tests {\n use crate::b;\n fn f() { {} }\n}\nuse crate::c;\n\
                   #[cfg(test)] #[path = \"x.rs\"] pub(crate) mod helpers;\n#[cfg(test)] use crate::d;\n\
                   #[cfg(test)] impl X { fn g() { crate::e::f() } }\n";
        let (code, names) = production_code(src);
        assert_eq!(names, ["helpers"]);
        let found: Vec<String> = crate_paths(&[], &code).into_iter().map(|(p, _)| p.join("::")).collect();
        // test impls are still code: only test modules and test uses go
        assert_eq!(found, ["a", "c", "e::f"]);
        assert_eq!(code.lines().count(), src.lines().count());
    }

    #[test]
    fn paths_expand_groups_and_resolve_self_and_super() {
        let module = s(&["a", "b"]);
        let code = "use crate::{x, y::{self, z::{w as v, *}}, q::r::S};\nuse super::{c, d::e};\n\
                    fn f() { super::super::top::f(); self::child::g(); $crate::m::h!(); Self::new(); }\n\
                    mod inner { use super::sib; use super::super::up; }\npub(in crate::p) fn k() {}\n";
        let found: Vec<(String, usize)> = crate_paths(&module, code)
            .into_iter()
            .map(|(p, l)| (p.join("::"), l))
            .collect();
        let want = [
            ("x", 1),
            ("y", 1),
            ("y::z::w", 1),
            ("y::z", 1),
            ("q::r::S", 1),
            ("a::c", 2),
            ("a::d::e", 2),
            ("top::f", 3),
            ("a::b::child::g", 3),
            ("m::h", 3),
            ("a::b::sib", 4),
            ("a::up", 4),
            ("p", 5),
        ];
        assert_eq!(found, want.iter().map(|(p, l)| (p.to_string(), *l)).collect::<Vec<_>>());
    }

    #[test]
    fn module_paths_of_files() {
        assert_eq!(module_path("lib.rs"), Some(vec![]));
        assert_eq!(module_path("main.rs"), Some(vec![]));
        assert_eq!(module_path("a.rs"), Some(s(&["a"])));
        assert_eq!(module_path("a/mod.rs"), Some(s(&["a"])));
        assert_eq!(module_path("a/b/main.rs"), Some(s(&["a", "b", "main"])));
        assert_eq!(module_path("bin/tool.rs"), None);
        assert_eq!(module_path("bin/tool/main.rs"), None);
        assert_eq!(module_path("bin.rs"), Some(s(&["bin"])));
    }

    #[test]
    fn a_cycle_between_two_files_is_found_with_its_edges() {
        let cycles = module_cycles(&files(&[
            ("lib.rs", "mod a; mod b;"),
            ("a.rs", "use crate::b::Thing;"),
            ("b.rs", "\n\nfn f() { crate::a::g() }"),
        ]));
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].modules, s(&["a", "b"]));
        assert_eq!(
            cycles[0].edges,
            vec![
                ("a".into(), "b".into(), "a.rs".into(), 1),
                ("b".into(), "a".into(), "b.rs".into(), 3)
            ]
        );
    }

    #[test]
    fn cycles_through_groups_super_and_mod_rs() {
        // p/mod.rs -> p::q -> r -> p (via a nested group and super:: from p/q.rs and from mod.rs)
        let found = cycle_members(&[
            ("lib.rs", ""),
            ("p/mod.rs", "use self::q::X;"),
            ("p/q.rs", "use crate::{z, r::{self}};"),
            ("r.rs", "use crate::{p::{self as pp}};"),
            ("s.rs", ""),
        ]);
        assert_eq!(found, vec![s(&["p", "p::q", "r"])]);
        let found = cycle_members(&[("m/mod.rs", "use super::n::f;"), ("n.rs", "use crate::m::g;")]);
        assert_eq!(found, vec![s(&["m", "n"])]);
        let found = cycle_members(&[("m/x.rs", "use super::super::n::f;"), ("n.rs", "use crate::m::x::g;")]);
        assert_eq!(found, vec![s(&["m::x", "n"])]);
        let found = cycle_members(&[
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "use crate::c::X;"),
            ("c.rs", "use crate::a::X;"),
            ("d.rs", "use crate::e::X;"),
            ("e.rs", "use crate::d::X;"),
        ]);
        assert_eq!(found, vec![s(&["a", "b", "c"]), s(&["d", "e"])]);
    }

    #[test]
    fn no_cycle_from_ancestors_comments_literals_tests_or_bins() {
        let base = [("lib.rs", "mod a; mod b;"), ("a.rs", "use crate::b::X;")];
        let with = |b: &'static str, extra: &[(&'static str, &'static str)]| {
            let mut v = base.to_vec();
            v.push(("b.rs", b));
            v.extend_from_slice(extra);
            cycle_members(&v)
        };
        assert_eq!(
            with("use crate::a::Y;", &[]).len(),
            1,
            "the control case must be a cycle"
        );
        assert!(with("// use crate::a::Y;\n/// see [crate::a::Y]", &[]).is_empty());
        assert!(with("const S: &str = \"crate::a::Y\";", &[]).is_empty());
        assert!(with("#[cfg(test)]\nmod tests { use crate::a::Y; }", &[]).is_empty());
        assert!(with("#[cfg(test)]\nmod tests;", &[("b/tests.rs", "use crate::a::Y;")]).is_empty());
        assert!(with("#[cfg(test)]\nmod fixtures;", &[("b/fixtures.rs", "use crate::a::Y;")]).is_empty());
        assert!(with("", &[("bin/tool.rs", "use crate::a::Y; use crate::b::Z;")]).is_empty());
        // child -> parent is not an edge; parent -> child is
        assert!(
            cycle_members(&[
                ("a/mod.rs", "use self::c::X;"),
                ("a/c.rs", "use crate::a::Y; use super::Z;")
            ])
            .is_empty()
        );
        // an item of the root (not a module) is not an edge
        assert!(cycle_members(&[("a.rs", "use crate::Error;"), ("lib.rs", "use crate::a::X;")]).is_empty());
    }

    #[test]
    fn tarjan_finds_components() {
        let g: BTreeMap<String, Vec<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "d"), ("e", "a")]
            .iter()
            .fold(BTreeMap::new(), |mut g, (f, t)| {
                g.entry(f.to_string()).or_insert_with(Vec::new).push(t.to_string());
                g
            });
        let big: Vec<Vec<String>> = strongly_connected(&g).into_iter().filter(|c| c.len() > 1).collect();
        assert_eq!(big, vec![s(&["a", "b", "c"])]);
    }

    #[test]
    fn globs() {
        assert!(glob_match("agent/src/runtime/podman.rs", "agent/src/runtime/podman.rs"));
        assert!(!glob_match(
            "agent/src/runtime/podman.rs",
            "agent/src/runtime/podman.rs.bak"
        ));
        assert!(glob_match("proto/**", "proto/src/lib.rs"));
        assert!(glob_match("proto/**", "proto/build.rs"));
        assert!(!glob_match("proto/**", "protocol/build.rs"));
        assert!(glob_match("agent/src/rpc/**", "agent/src/rpc/server/convert.rs"));
        assert!(glob_match("*/tests/**", "agent/tests/proxy.rs"));
        assert!(!glob_match("*/tests/**", "agent/src/tests.rs"));
        assert!(glob_match("**/db.rs", "db.rs"));
        assert!(glob_match("**/db.rs", "master/src/db.rs"));
        assert!(glob_match("master/src/db*.rs", "master/src/db_migrate.rs"));
        assert!(!glob_match("master/src/*.rs", "master/src/db/x.rs"));
        assert!(glob_match("a/**/b/*.rs", "a/x/y/b/c.rs"));
        assert!(!glob_match("a/**/b/*.rs", "a/x/y/c.rs"));
    }

    #[test]
    fn patterns_match_whole_identifiers() {
        let code = "use mcp_proto::X;\nlet p = crate::proto::Y;\nmyproto::z();\nmcp_proto_extra::q();\nproto :: w\n\
                    use hickory_server::proto::rr;\nsuper::proto::Z;";
        assert_eq!(pattern_lines(code, "proto::"), [2, 7]);
        assert_eq!(pattern_lines(code, "mcp_proto"), [1]);
        assert_eq!(pattern_lines(code, "mcp_proto::"), [1]);
    }

    #[test]
    fn confined_paths_are_reported_by_file_and_line() {
        let rules: &[Confined] = &[("bollard::", &["agent/src/runtime/podman.rs"], "add a method there")];
        let ok = files(&[
            ("agent/src/runtime/podman.rs", "use bollard::Docker;"),
            (
                "agent/src/ops.rs",
                "// bollard::Docker\nconst S: &str = \"bollard::x\";\n",
            ),
            ("agent/src/plan.rs", "#[cfg(test)]\nmod tests { use bollard::Docker; }"),
            ("agent/src/spec.rs", "#[cfg(test)]\nmod tests;"),
            ("agent/src/spec/tests.rs", "use bollard::Docker;"),
        ]);
        assert_eq!(confined_violations(&ok, rules), Vec::<String>::new());
        let bad = files(&[(
            "agent/src/ops.rs",
            "fn f() {}\nuse bollard::Docker;\nlet x = bollard::y();",
        )]);
        let v = confined_violations(&bad, rules);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("`bollard::` in agent/src/ops.rs:2,3;"), "{}", v[0]);
        assert!(
            v[0].contains("agent/src/runtime/podman.rs") && v[0].contains("add a method there"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn the_doc_must_name_every_crate_directory() {
        let dirs = s(&[".", "model", "infra"]);
        assert!(doc_violations("d.md", "- **`model/`** (`mcp-model`)\n- `infra/src/tls.rs`", &dirs).is_empty());
        let v = doc_violations("d.md", "- **`model/`**\n- infrastructure", &dirs);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("d.md never names `infra/`"), "{}", v[0]);
    }

    /// (name, directory or "" for a registry package, dependencies (name, kind)).
    type Pkg<'a> = (&'a str, &'a str, &'a [(&'a str, Option<&'a str>)]);

    /// A `cargo metadata` document.
    fn metadata(pkgs: &[Pkg]) -> serde_json::Value {
        let id = |n: &str| format!("id#{n}");
        let packages: Vec<_> = pkgs
            .iter()
            .map(|(n, dir, _)| {
                let manifest = if dir.is_empty() {
                    format!("/reg/{n}/Cargo.toml")
                } else {
                    format!("/ws/{dir}/Cargo.toml")
                };
                json!({"id": id(n), "name": n, "version": "1.0.0", "manifest_path": manifest})
            })
            .collect();
        let members: Vec<_> = pkgs
            .iter()
            .filter(|(_, d, _)| !d.is_empty())
            .map(|(n, _, _)| id(n))
            .collect();
        let nodes: Vec<_> = pkgs
            .iter()
            .map(|(n, _, deps)| {
                let deps: Vec<_> = deps
                    .iter()
                    .map(|(d, kind)| json!({"name": d, "pkg": id(d), "dep_kinds": [{"kind": kind, "target": null}]}))
                    .collect();
                json!({"id": id(n), "deps": deps})
            })
            .collect();
        json!({"packages": packages, "workspace_members": members, "workspace_root": "/ws",
               "resolve": {"nodes": nodes, "root": null}})
    }

    const BANS: &[ClosureBan] = &[("m", &["tokio", "rusqlite"], "keep m pure")];
    const TABLE: &[Layer] = &[("m", "model", &[]), ("i", "infra", &["m"]), ("t", "tests", &["m", "i"])];

    #[test]
    fn closure_bans_follow_normal_dependencies_only() {
        let g = parse_metadata(&metadata(&[
            (
                "m",
                "model",
                &[("serde", None), ("tempfile", Some("dev")), ("cc", Some("build"))],
            ),
            ("serde", "", &[]),
            ("tempfile", "", &[("tokio", None)]),
            ("cc", "", &[("rusqlite", None)]),
            ("tokio", "", &[]),
            ("rusqlite", "", &[]),
        ]))
        .unwrap();
        assert_eq!(check_closure_bans(&g, BANS), Vec::<String>::new());
        let g = parse_metadata(&metadata(&[
            ("m", "model", &[("serde", None), ("toml", None)]),
            ("serde", "", &[("mio", None)]),
            ("toml", "", &[("serde", None), ("tokio", None)]),
            ("mio", "", &[]),
            ("tokio", "", &[("mio", None)]),
        ]))
        .unwrap();
        let v = check_closure_bans(&g, BANS);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("m must not depend on tokio, even indirectly, but does: m -> toml -> tokio; keep m pure")
        );
        let v = check_closure_bans(&g, &[("missing", &["tokio"], "")]);
        assert!(v[0].contains("`missing`, which is not a workspace crate"), "{v:?}");
    }

    #[test]
    fn layering_reports_forbidden_edges_and_unknown_crates() {
        let g = parse_metadata(&metadata(&[
            ("m", "model", &[]),
            ("i", "infra", &[("m", None)]),
            ("t", "tests", &[("i", Some("dev")), ("m", None)]),
        ]))
        .unwrap();
        assert_eq!(check_layers(&g, TABLE), Vec::<String>::new());
        let g = parse_metadata(&metadata(&[
            ("m", "model", &[("i", Some("dev"))]),
            ("i", "infrastructure", &[("m", None)]),
            ("x", "x", &[("m", None)]),
        ]))
        .unwrap();
        let v = check_layers(&g, TABLE);
        assert_eq!(v.len(), 4, "{v:#?}");
        assert!(v[0].contains("`i` lives in infrastructure/ but LAYERS says infra/"));
        assert!(v[1].contains("m -> i (dev) is not allowed; LAYERS lets m use: no workspace crate"));
        assert!(v[2].contains("workspace crate `x` (x/) has no row in LAYERS"));
        assert!(v[3].contains("LAYERS has a row for `t` (tests/) but the workspace has no such crate"));
    }

    #[test]
    fn the_cargo_lock_fallback_over_approximates() {
        let lock = "version = 4\n\n[[package]]\nname = \"m\"\nversion = \"0.1.0\"\ndependencies = [\n \"tokio 1.0.0\",\n]\n\n\
                    [[package]]\nname = \"serde\"\nversion = \"1.0.0\"\ndependencies = [\n \"cc\",\n \"mio 2.0.0 (registry+x)\",\n]\n\n\
                    [[package]]\nname = \"cc\"\nversion = \"1.0.0\"\n\n\
                    [[package]]\nname = \"mio\"\nversion = \"1.0.0\"\n\n\
                    [[package]]\nname = \"mio\"\nversion = \"2.0.0\"\nsource = \"registry+x\"\n\n\
                    [[package]]\nname = \"tokio\"\nversion = \"1.0.0\"\n";
        assert_eq!(parse_lock(lock).len(), 6);
        let no_deps = |deps: serde_json::Value| {
            json!({"workspace_root": "/ws", "packages": [
                {"name": "m", "version": "0.1.0", "manifest_path": "/ws/model/Cargo.toml", "dependencies": deps}]})
        };
        // tokio is only a dev-dependency of m (the lock alone cannot tell): fine
        let g = parse_fallback(
            &no_deps(json!([{"name": "serde", "kind": null, "source": "registry+x"},
                            {"name": "tokio", "kind": "dev", "source": "registry+x"}])),
            lock,
            "offline".into(),
        )
        .unwrap();
        assert!(g.fallback.as_deref().is_some_and(|f| f.contains("offline")));
        let bans: &[ClosureBan] = &[("m", &["tokio", "mio"], "")];
        let v = check_closure_bans(&g, bans);
        // serde's lock entry names mio 2.0.0: found through the lock, marked as such
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("m -> serde -> mio [from Cargo.lock"), "{v:?}");
        let stale = parse_fallback(
            &no_deps(json!([{"name": "gone", "kind": null, "source": "registry+x"}])),
            lock,
            "x".into(),
        );
        assert!(stale.unwrap_err().contains("stale"));
    }

    #[test]
    #[should_panic(expected = "1 violation(s) of rule X:\n  something is wrong")]
    fn violations_fail_the_test() {
        assert_clean("rule X", &["something is wrong".to_string()]);
    }

    /// The file-system side of rules 1, 3 and 4 on a small workspace in a temp dir.
    #[test]
    fn a_workspace_on_disk() {
        let root = std::env::temp_dir().join(format!(
            "archcheck-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&root);
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write(
            "Cargo.toml",
            "[workspace]\nmembers = [\n  \"core\", # the core\n  \"crates/*\",\n]\n",
        );
        write("core/Cargo.toml", "[package]\nname = \"core\"\n");
        write("core/src/lib.rs", "mod a;\nmod b;\n");
        write("core/src/a.rs", "use crate::b::X;\n");
        write(
            "core/src/b/mod.rs",
            "pub fn f() { super::a::g() }\n#[cfg(test)]\nmod tests;\n",
        );
        write("core/src/b/tests.rs", "use bollard::Docker;\n");
        write("core/src/bin/tool.rs", "use bollard::Docker;\n");
        write("crates/extra/Cargo.toml", "[package]\nname = \"extra\"\n");
        write("crates/extra/src/main.rs", "fn main() {}\n");
        write("target/debug/gen.rs", "use bollard::Docker;\n");
        write("docs/architecture.md", "`core/` and `crates/extra/`\n");
        assert_eq!(workspace_member_dirs(&root).unwrap(), s(&["core", "crates/extra"]));
        let cycles = check_module_cycles(&root);
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert!(cycles[0].starts_with("module cycles: core/src: 2 modules in a cycle: a, b; edges: a -> b (core/src/a.rs:1), b -> a (core/src/b/mod.rs:1)"), "{}", cycles[0]);
        let v = check_confined(&root, &[("bollard::", &["core/src/a.rs"], "no")]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("core/src/bin/tool.rs:1"), "{v:?}");
        assert!(check_doc(&root, ARCH_DOC).is_empty());
        write("docs/architecture.md", "`core/` only\n");
        assert_eq!(check_doc(&root, ARCH_DOC).len(), 1);
        fs::remove_dir_all(&root).unwrap();
    }
}
