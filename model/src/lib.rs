//! The pure model of mcp: service definitions and their validation,
//! placement, sync planning, snapshot rules, identities and the
//! authorization table, join tokens. No IO: this crate depends on nothing
//! that touches a socket, a file or a clock, and `tests/tests/architecture.rs`
//! keeps it that way.

pub mod identity;
pub mod join;
pub mod placement;
pub mod service;
pub mod snapshot;
pub mod sync;

use serde::de::DeserializeOwned;

/// Parses TOML into `T`, reporting the dotted path and line of a bad field.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, (String, String)> {
    let located = |field: &str, e: &toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let field = match (field, line) {
            ("" | ".", Some(l)) => format!("line {l}"),
            ("" | ".", None) => "(document)".to_string(),
            (f, Some(l)) => format!("{f} (line {l})"),
            (f, None) => f.to_string(),
        };
        (field, e.message().trim().to_string())
    };
    let de = toml::Deserializer::parse(text).map_err(|e| located("", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| located(&e.path().to_string(), e.inner()))
}
