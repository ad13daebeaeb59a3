//! Snapshots and migration (SPEC §11) end to end: a master and real agents
//! (each its own rootless podman user, `agent.volumes_root` keeping their
//! volumes apart), real podman, real TLS. The migrated service runs a
//! SQLite writer in WAL mode inside its container (the host's dynamic
//! loader and libraries copied into a volume), so the database is under
//! write load while it is snapshotted, and stopping the service stops the
//! writes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mcp_tests::{REGISTRY, Run, TestAgent, TestMaster, as_user, bin, fleet_users, user_dir, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn sleeper() -> String {
    format!("{REGISTRY}/mcp-test/sleeper:v1")
}

/// Joins an agent whose volumes live under its own dir.
fn join(master: &TestMaster, user: usize, name: &str, role: &str) -> TestAgent {
    let mut a = TestAgent::join(master, fleet_users()[user], name, role);
    let root = a.dir.join("volumes");
    a.configure(|c| {
        c["agent"]
            .as_table_mut()
            .unwrap()
            .insert("volumes_root".into(), root.display().to_string().into());
    });
    a.run();
    wait_for(&format!("{name} healthy"), WAIT, || {
        master.node_status(name).is_some_and(|s| s["status"] == "healthy")
    });
    a
}

/// Host path of a definition's volume source on `agent`.
fn host(agent: &TestAgent, source: &str) -> PathBuf {
    agent.dir.join("volumes").join(source.trim_start_matches('/'))
}

/// Creates `source` (and its parents under the volumes root) owned by the
/// agent's user.
fn volume_dir(agent: &TestAgent, source: &str) -> PathBuf {
    let mut p = agent.dir.join("volumes");
    for part in source.trim_start_matches('/').split('/') {
        p.push(part);
        user_dir(agent.user, &p);
    }
    p
}

/// Copies the sqlite-writer binary with its loader and libraries into
/// `source` on `agent`, so a busybox container can run it.
fn plant_writer(agent: &TestAgent, source: &str) {
    let dir = volume_dir(agent, source);
    let writer = bin("sqlite-writer");
    let ldd = Command::new("ldd").arg(&writer).output().unwrap();
    let mut files = vec![writer.clone()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(p));
        }
    }
    for f in files {
        let dst = dir.join(f.file_name().unwrap());
        std::fs::copy(std::fs::canonicalize(&f).unwrap(), &dst).unwrap();
        Command::new("chown")
            .arg(format!("{0}:{0}", agent.user.uid))
            .arg(&dst)
            .status()
            .unwrap();
    }
}

const LEDGER: &str = r#"
name = "ledger"
[snapshot]
exclude = ["*.tmp"]
[[components]]
name = "db"
image = "IMAGE"
volumes = ["/srv/ledger:/data", "/srv/ledger-tools:/tools:ro"]
cmd = ["/tools/ld-linux-x86-64.so.2", "--library-path", "/tools", "/tools/sqlite-writer", "write", "/data/ledger.db"]
"#;

/// Rows in a database being written, 0 while the writer has not created
/// its table yet.
fn rows_now(user: mcp_tests::User, db: &Path) -> i64 {
    let out = as_user(user, &bin("sqlite-writer"))
        .arg("check")
        .arg(db)
        .output()
        .unwrap();
    if !out.status.success() {
        return 0;
    }
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["rows"]
        .as_i64()
        .unwrap_or(0)
}

/// `sqlite-writer check` on a database, as `user` (None: root).
fn check_db(user: Option<mcp_tests::User>, db: &Path, upto: Option<i64>) -> Value {
    let mut c = match user {
        Some(u) => as_user(u, &bin("sqlite-writer")),
        None => Command::new(bin("sqlite-writer")),
    };
    c.arg("check").arg(db);
    if let Some(n) = upto {
        c.args(["--upto", &n.to_string()]);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "check {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Extracts a stored snapshot with the system's tar and zstd.
fn extract(archive: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("tar")
        .args(["--zstd", "-xf", archive, "-C"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn tar_list(archive: &str) -> Vec<String> {
    let out = Command::new("tar").args(["--zstd", "-tf", archive]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn node_of(master: &TestMaster, service: &str) -> String {
    master.sql(&format!("select node from placements where service = '{service}'"))
}

fn ok(r: &Run, what: &str) -> Value {
    r.expect_code(0, what);
    r.json()
}

#[test]
fn sqlite_service_migrates_under_write_load_and_force_migrates_from_a_snapshot() {
    let master = TestMaster::start("sm1");
    let _a1 = join(&master, 0, "sm1", "master");
    let a2 = join(&master, 1, "sm2", "worker");
    let mut a3 = join(&master, 2, "sm3", "worker");
    let _edge = join(&master, 0, "sm4", "edge");

    // The service's data and tools on sm2, where placement puts it (the
    // worker with the fewest containers, ties by name).
    volume_dir(&a2, "/srv/ledger");
    plant_writer(&a2, "/srv/ledger-tools");
    std::fs::write(host(&a2, "/srv/ledger/scratch.tmp"), "excluded").unwrap();
    master.define("ledger", &LEDGER.replace("IMAGE", &sleeper()));
    master.mcp(&["deploy", "ledger"]).expect_code(0, "deploy ledger");
    assert_eq!(node_of(&master, "ledger"), "sm2");
    let db2 = host(&a2, "/srv/ledger/ledger.db");
    wait_for("rows on sm2", WAIT, || db2.exists() && rows_now(a2.user, &db2) >= 400);

    // A snapshot under write load: consistent (ids without gaps: whole
    // transactions only), no WAL/SHM files, excludes honoured.
    let snap = ok(&master.mcp(&["--json", "snapshot", "ledger"]), "snapshot ledger");
    let path = snap["snapshot"]["path"].as_str().unwrap().to_string();
    let names = tar_list(&path);
    assert!(names.iter().any(|n| n == "srv/ledger/ledger.db"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.ends_with("-wal") || n.ends_with("-shm")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    let x = extract(&path);
    let c = check_db(None, &x.path().join("srv/ledger/ledger.db"), None);
    assert_eq!(c["integrity"], "ok");
    assert!(c["rows"].as_i64().unwrap() >= 400, "{c}");
    assert_eq!(c["rows"], c["max_id"], "a torn copy: {c}");
    let after = check_db(Some(a2.user), &db2, None);
    assert!(
        after["rows"].as_i64() > c["rows"].as_i64(),
        "writes continued during the snapshot"
    );

    // Refusals change nothing: already there, core tier, edge target.
    let r = master.mcp(&["migrate", "ledger", "--to", "sm2"]);
    r.expect_code(2, "migrate to where it runs");
    master.define(
        "corez",
        &format!(
            "name = \"corez\"\ntier = \"core\"\n[[components]]\nname = \"app\"\nimage = \"{}\"\n",
            sleeper()
        ),
    );
    master.mcp(&["deploy", "corez"]).expect_code(0, "deploy corez");
    let r = master.mcp(&["migrate", "corez", "--to", "sm3"]);
    r.expect_code(1, "migrate core");
    assert!(r.stderr.contains("core tier"), "{}", r.stderr);
    let r = master.mcp(&["migrate", "ledger", "--to", "sm4"]);
    r.expect_code(1, "migrate to an edge");
    assert!(r.stderr.contains("edge"), "{}", r.stderr);
    assert_eq!(node_of(&master, "ledger"), "sm2");

    // Migrate sm2 → sm3.
    let r = master.mcp(&["--json", "migrate", "ledger", "--to", "sm3"]);
    let m = &ok(&r, "migrate ledger")[0];
    assert_eq!(m["success"], true, "{m}");
    let steps: Vec<&str> = m["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["stop", "snapshot", "import", "deploy", "undeploy"], "{m}");
    assert!(
        m["steps"].as_array().unwrap().iter().all(|s| s["success"] == true),
        "{m}"
    );
    assert_eq!(node_of(&master, "ledger"), "sm3");
    assert_eq!(
        master.sql("select node from dns_records where service = 'ledger'"),
        "sm3",
        "DNS follows the service"
    );
    assert!(a2.containers().is_empty(), "source undeployed: {:?}", a2.containers());

    // Row count identical: the source's final database (its writer stopped
    // with the service), the snapshot that moved, and the target's rows.
    let fin = check_db(Some(a2.user), &db2, None);
    assert_eq!(fin["integrity"], "ok");
    let moved = m["snapshot"]["path"].as_str().unwrap();
    let x = extract(moved);
    let in_archive = check_db(None, &x.path().join("srv/ledger/ledger.db"), None);
    assert_eq!(in_archive["rows"], fin["rows"], "snapshot vs source");
    assert_eq!(in_archive["digest"], fin["digest"]);
    let db3 = host(&a3, "/srv/ledger/ledger.db");
    let n = fin["rows"].as_i64().unwrap();
    wait_for("the writer running on sm3", WAIT, || rows_now(a3.user, &db3) > n);
    let on3 = check_db(Some(a3.user), &db3, Some(n));
    assert_eq!(on3["integrity"], "ok");
    assert_eq!(on3["rows"], fin["rows"], "target vs source");
    assert_eq!(on3["digest"], fin["digest"]);

    // The source dies: without --force nothing moves; with it, the latest
    // snapshot does.
    a3.kill();
    wait_for("sm3 unhealthy", WAIT, || {
        master.node_status("sm3").is_some_and(|s| s["status"] == "unhealthy")
    });
    let r = master.mcp(&["migrate", "ledger", "--to", "sm2"]);
    r.expect_code(1, "migrate from a dead node without --force");
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(node_of(&master, "ledger"), "sm3");
    let r = master.mcp(&["--json", "migrate", "ledger", "--to", "sm2", "--force"]);
    let m = &ok(&r, "forced migration")[0];
    assert_eq!(m["success"], true, "{m}");
    assert_eq!(
        m["snapshot"]["path"].as_str().unwrap(),
        moved,
        "the latest snapshot: {m}"
    );
    let undeploy = m["steps"].as_array().unwrap().last().unwrap();
    assert_eq!(undeploy["success"], false, "{m}");
    assert!(undeploy["error"].as_str().unwrap().contains("unreachable"), "{m}");
    assert_eq!(node_of(&master, "ledger"), "sm2");
    wait_for("the writer running on sm2 again", WAIT, || rows_now(a2.user, &db2) > n);
    let back = check_db(Some(a2.user), &db2, Some(n));
    assert_eq!(
        (back["rows"].clone(), back["digest"].clone()),
        (fin["rows"].clone(), fin["digest"].clone())
    );

    // An unhealthy node is never a target.
    let r = master.mcp(&["migrate", "ledger", "--to", "sm3"]);
    r.expect_code(1, "migrate to an unhealthy node");
    assert!(r.stderr.contains("unhealthy"), "{}", r.stderr);
    drop(a3);
}

const NOTES: &str = r#"
name = "notes"
[snapshot]
method = "exec:date > /data/exec-marker.txt"
[[components]]
name = "app"
image = "IMAGE"
volumes = ["/srv/notes:/data"]
"#;

fn stored(master: &TestMaster) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(master.dir.join("data/snapshots/notes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn restore_refuses_damaged_archives_and_retention_keeps_seven() {
    let master = TestMaster::start("sk1");
    let a1 = join(&master, 0, "sk1", "master");
    let a2 = join(&master, 1, "sk2", "worker");
    let data = volume_dir(&a2, "/srv/notes");
    std::fs::write(data.join("a.txt"), "v1").unwrap();
    let def_text = NOTES.replace("IMAGE", &sleeper());
    master.define("notes", &def_text);
    master.mcp(&["deploy", "notes"]).expect_code(0, "deploy notes");
    assert_eq!(node_of(&master, "notes"), "sk2");

    // exec: method ran in the container before archiving.
    let first = ok(&master.mcp(&["--json", "snapshot", "notes"]), "snapshot notes");
    let first_name = first["snapshot"]["name"].as_str().unwrap().to_string();
    let first_path = first["snapshot"]["path"].as_str().unwrap().to_string();
    let x = extract(&first_path);
    assert!(x.path().join("srv/notes/exec-marker.txt").exists());
    assert_eq!(std::fs::read_to_string(x.path().join("srv/notes/a.txt")).unwrap(), "v1");

    // Restore by name: the data comes back, the service runs again.
    std::fs::write(data.join("a.txt"), "v2").unwrap();
    master
        .mcp(&["snapshot", "restore", "notes", "--at", &first_name[..13]])
        .expect_code(0, "restore");
    assert_eq!(std::fs::read_to_string(data.join("a.txt")).unwrap(), "v1");
    assert_eq!(a2.inspect("notes-app", "{{.State.Status}}").as_deref(), Some("running"));
    master
        .mcp(&["snapshot", "restore", "notes", "--at", "not-a-time"])
        .expect_code(2, "bad --at");
    master.mcp(&["snapshot", "nosuch"]).expect_code(2, "unknown service");

    // A damaged stored archive is refused before anything stops.
    std::fs::write(data.join("a.txt"), "v3").unwrap();
    let second = ok(&master.mcp(&["--json", "snapshot", "notes"]), "second snapshot");
    let second_path = second["snapshot"]["path"].as_str().unwrap().to_string();
    let good = std::fs::read(&second_path).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    std::fs::write(&second_path, &bad).unwrap();
    std::fs::write(data.join("a.txt"), "v4").unwrap();
    let r = master.mcp(&["snapshot", "restore", "notes"]);
    r.expect_code(1, "restore of a damaged snapshot");
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(data.join("a.txt")).unwrap(), "v4");
    assert_eq!(a2.inspect("notes-app", "{{.State.Status}}").as_deref(), Some("running"));
    std::fs::write(&second_path, &good).unwrap();

    // The agent verifies too: truncated and corrupted streams are refused
    // with DataLoss, existing data untouched, no staging left behind;
    // existing data needs force.
    let keep = volume_dir(&a1, "/srv/notes").join("keep.txt");
    std::fs::write(&keep, "untouched").unwrap();
    let def = mcp_model::service::parse("notes.toml", &def_text).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&good));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let import = |bytes: Vec<u8>, force: bool| -> Result<mcp_proto::ImportServiceDataResponse, tonic::Status> {
        rt.block_on(async {
            use mcp_proto::{ImportHeader, ImportServiceDataRequest, ServiceSpec, import_service_data_request::Msg};
            let mut msgs = vec![ImportServiceDataRequest {
                msg: Some(Msg::Header(ImportHeader {
                    service: Some(ServiceSpec::from(&def)),
                    force,
                    sha256: sha.clone(),
                    size: good.len() as u64,
                    request_id: "t".into(),
                })),
            }];
            for c in bytes.chunks(1000) {
                msgs.push(ImportServiceDataRequest {
                    msg: Some(Msg::Chunk(c.to_vec())),
                });
            }
            let mut client = a1.client().await;
            client
                .import_service_data(tokio_stream_iter(msgs))
                .await
                .map(|r| r.into_inner())
        })
    };
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(a1.dir.join("volumes/srv"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("mcp-"))
            .collect()
    };
    let e = import(good[..good.len() / 2].to_vec(), true).unwrap_err();
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert!(e.message().contains("truncated"), "{e:?}");
    let e = import(bad.clone(), true).unwrap_err();
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "untouched");
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    let e = import(good.clone(), false).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("force"), "{e:?}");
    let done = import(good.clone(), true).unwrap();
    assert_eq!(done.bytes, good.len() as u64);
    assert!(!keep.exists(), "replaced by the archive");
    assert_eq!(
        std::fs::read_to_string(keep.with_file_name("a.txt")).unwrap(),
        "v3",
        "the second snapshot's data"
    );

    // Retention: 7 kept (default), oldest removed, files and records alike.
    for i in 0..7 {
        master
            .mcp(&["snapshot", "notes"])
            .expect_code(0, &format!("snapshot {i}"));
    }
    let list = ok(&master.mcp(&["--json", "snapshot", "list", "notes"]), "list");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(
        !names.contains(&first_name.as_str()),
        "the oldest went first: {names:?}"
    );
    assert!(!names.contains(&second["snapshot"]["name"].as_str().unwrap()));
    let files = stored(&master);
    assert_eq!(files.len(), 7, "{files:?}");
    for n in &names {
        assert!(files.contains(&format!("{n}.tar.zst")), "{n} not in {files:?}");
    }
    assert_eq!(
        master.sql("select count(*) from snapshots where service = 'notes'"),
        "7"
    );
}

/// A stream of the given messages (for client-streaming calls).
fn tokio_stream_iter<T: Send + 'static>(
    v: Vec<T>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send + 'static {
    tonic::codegen::tokio_stream::iter(v)
}
