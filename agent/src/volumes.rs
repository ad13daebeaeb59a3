//! A service's data directory on this host: the host-side sources of its
//! components' volumes, resolved under `agent.volumes_root` when set.

use std::path::{Component, Path, PathBuf};

use mcp_model::service::ServiceDef;

/// One volume source of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Source as written, without the leading `/` (`srv/web`): the archive
    /// name of its root.
    pub rel: String,
    /// Where it is on this host.
    pub host: PathBuf,
}

/// Resolves a definition's volume source on this host.
pub fn host_source(source: &str, root: Option<&Path>) -> PathBuf {
    match root {
        Some(r) => r.join(source.trim_start_matches('/')),
        None => PathBuf::from(source),
    }
}

/// A volume string (`src:dst[:opts]`) with its source resolved on this host.
pub fn host_volume(vol: &str, root: Option<&Path>) -> String {
    match (root, vol.split_once(':')) {
        (Some(_), Some((src, rest))) => format!("{}:{rest}", host_source(src, root).display()),
        _ => vol.to_string(),
    }
}

/// The service's data directory: the distinct volume sources of all its
/// components, a source inside another one counted once (with the outer).
pub fn volumes(def: &ServiceDef, root: Option<&Path>) -> Vec<Volume> {
    let mut rels: Vec<String> = def
        .components
        .iter()
        .flat_map(|c| c.volumes.iter())
        .filter_map(|v| v.split(':').next())
        .map(|s| {
            Path::new(s)
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => n.to_str(),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .filter(|s| !s.is_empty())
        .collect();
    rels.sort();
    rels.dedup();
    let nested = |r: &String, all: &[String]| all.iter().any(|o| o != r && r.starts_with(&format!("{o}/")));
    let outer: Vec<String> = rels.iter().filter(|r| !nested(r, &rels)).cloned().collect();
    outer
        .into_iter()
        .map(|rel| Volume {
            host: host_source(&format!("/{rel}"), root),
            rel,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(vols: &[&str]) -> ServiceDef {
        let mut d = mcp_model::service::parse(
            "t",
            "name = \"db\"\n[[components]]\nname = \"db\"\nimage = \"r/x:v1\"\n",
        )
        .unwrap();
        d.components[0].volumes = vols.iter().map(|s| s.to_string()).collect();
        d
    }

    #[test]
    fn volumes_are_deduplicated_and_rooted() {
        let d = def(&[
            "/srv/db:/data",
            "/srv/db/sub:/sub:ro",
            "/etc/db.conf:/etc/db.conf:ro",
            "/srv/db:/again",
        ]);
        let v = volumes(&d, Some(Path::new("/r")));
        assert_eq!(
            v,
            vec![
                Volume {
                    rel: "etc/db.conf".into(),
                    host: "/r/etc/db.conf".into()
                },
                Volume {
                    rel: "srv/db".into(),
                    host: "/r/srv/db".into()
                },
            ]
        );
        assert_eq!(volumes(&d, None)[1].host, PathBuf::from("/srv/db"));
        assert_eq!(
            host_volume("/srv/db:/data:ro", Some(Path::new("/r"))),
            "/r/srv/db:/data:ro"
        );
        assert_eq!(host_volume("/srv/db:/data", None), "/srv/db:/data");
    }
}
