//! Benchmark (SPEC §11, issue 9): snapshot and restore of a 1 GiB data
//! directory through a real master and agent, with the throughput (MB/s of
//! data directory) and the RSS growth of both processes while they run
//! (sampled from /proc every 20 ms; VmHWM at the end). Target: RSS growth
//! < 64 MiB. Run with `bench/snapshot` (as root).
//!
//! The data: a SQLite database (WAL mode, copied with VACUUM INTO), files
//! of incompressible bytes and files of compressible text.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mcp_tests::{REGISTRY, TestAgent, TestMaster, fleet_users, proc_status_kib, user_dir, wait_for};

const MIB: u64 = 1024 * 1024;

/// Peak VmRSS of `pid` while `f` runs, in KiB.
fn sampled<T>(pids: &[u32], f: impl FnOnce() -> T) -> (T, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
    let sampler = {
        let (stop, peaks, pids) = (stop.clone(), peaks.clone(), pids.to_vec());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (i, pid) in pids.iter().enumerate() {
                    peaks[i].fetch_max(proc_status_kib(*pid, "VmRSS"), Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let r = f();
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    (r, peaks.iter().map(|p| p.load(Ordering::SeqCst)).collect())
}

/// xorshift64*: fast incompressible bytes.
fn random_fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn make_data(dir: &std::path::Path, total_mib: u64) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let db_mib = total_mib / 4;
    let random_mib = total_mib * 3 / 8;
    let text_mib = total_mib - db_mib - random_mib;
    // SQLite: rows of 4 KiB blobs, WAL mode.
    let conn = rusqlite::Connection::open(dir.join("app.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        .unwrap();
    let mut blob = vec![0u8; 4096];
    let rows = db_mib * MIB / 4096;
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..rows {
        random_fill(&mut blob[..2048], &mut state);
        blob[2048..].fill((i % 251) as u8);
        tx.execute("INSERT INTO blobs (data) VALUES (?1)", [&blob]).unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    // Incompressible files of 64 MiB.
    let mut buf = vec![0u8; MIB as usize];
    for f in 0..random_mib.div_ceil(64) {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("random-{f}.bin"))).unwrap());
        for _ in 0..64.min(random_mib - f * 64) {
            random_fill(&mut buf, &mut state);
            out.write_all(&buf).unwrap();
        }
    }
    // Compressible text (logs-like) in 1 MiB files, in subdirectories.
    for f in 0..text_mib {
        let sub = dir.join(format!("logs/{:02}", f % 16));
        std::fs::create_dir_all(&sub).unwrap();
        let mut out = std::io::BufWriter::new(std::fs::File::create(sub.join(format!("{f}.log"))).unwrap());
        let mut written = 0u64;
        let mut n = 0u64;
        while written < MIB {
            let line = format!(
                "2026-11-25T03:00:{:02}Z level=info req={n} path=/api/v1/items/{} status=200 ms={}\n",
                n % 60,
                n * 7 % 1000,
                n % 37
            );
            out.write_all(line.as_bytes()).unwrap();
            written += line.len() as u64;
            n += 1;
        }
    }
    dir_size(dir)
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
    }
    total
}

fn chown_tree(uid: u32, dir: &std::path::Path) {
    let s = std::process::Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(s.success());
}

fn main() {
    let total_mib: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let mut master = TestMaster::init("bn1");
    master.configure(|c| {
        c["timeouts"]["snapshot"] = 1800.into();
    });
    master.run();
    let mut agent = TestAgent::join(&master, fleet_users()[0], "bn1", "master");
    let root = agent.dir.join("volumes");
    agent.configure(|c| {
        c["agent"]
            .as_table_mut()
            .unwrap()
            .insert("volumes_root".into(), root.display().to_string().into());
    });
    agent.run();
    wait_for("bn1 healthy", Duration::from_secs(60), || {
        master.node_status("bn1").is_some_and(|s| s["status"] == "healthy")
    });
    user_dir(agent.user, &root.join("srv"));
    let data = root.join("srv/benchdata");
    user_dir(agent.user, &data);
    eprintln!("writing {total_mib} MiB of data…");
    let t = Instant::now();
    let bytes = make_data(&data, total_mib);
    chown_tree(agent.user.uid, &data);
    eprintln!(
        "data: {:.1} MiB in {:.1} s",
        bytes as f64 / MIB as f64,
        t.elapsed().as_secs_f64()
    );
    master.define(
        "benchdata",
        &format!(
            "name = \"benchdata\"\n[[components]]\nname = \"app\"\nimage = \"{REGISTRY}/mcp-test/sleeper:v1\"\nvolumes = [\"/srv/benchdata:/data\"]\n"
        ),
    );
    master.mcp(&["deploy", "benchdata"]).expect_code(0, "deploy");
    // Let the processes settle before the baselines.
    std::thread::sleep(Duration::from_secs(2));
    let pids = [agent.pid().unwrap(), master.pid().unwrap()];
    let base: Vec<u64> = pids.iter().map(|p| proc_status_kib(*p, "VmRSS")).collect();

    let t = Instant::now();
    let (snap, peak_snap) = sampled(&pids, || master.mcp(&["--json", "snapshot", "benchdata"]));
    let snap_s = t.elapsed().as_secs_f64();
    snap.expect_code(0, "snapshot");
    let archive = snap.json()["snapshot"]["size"].as_u64().unwrap();

    let t = Instant::now();
    let (restore, peak_restore) = sampled(&pids, || master.mcp(&["snapshot", "restore", "benchdata"]));
    let restore_s = t.elapsed().as_secs_f64();
    restore.expect_code(0, "restore");
    let restored = dir_size(&data);
    assert!(restored + MIB > bytes, "restored {restored} of {bytes} bytes");
    let hwm: Vec<u64> = pids.iter().map(|p| proc_status_kib(*p, "VmHWM")).collect();

    let mb = bytes as f64 / 1e6;
    println!(
        "bench-snapshot: data dir {:.1} MiB ({bytes} bytes), archive {:.1} MiB (zstd level 3)",
        bytes as f64 / MIB as f64,
        archive as f64 / MIB as f64
    );
    println!(
        "{:<10} {:>9} {:>10}   {:>22}   {:>22}",
        "op", "seconds", "MB/s", "agent RSS peak/growth", "master RSS peak/growth"
    );
    for (op, secs, peaks) in [("snapshot", snap_s, &peak_snap), ("restore", restore_s, &peak_restore)] {
        println!(
            "{op:<10} {secs:>9.2} {:>10.1}   {:>10.1} / {:>+7.1} MiB   {:>10.1} / {:>+7.1} MiB",
            mb / secs,
            peaks[0] as f64 / 1024.0,
            (peaks[0] as f64 - base[0] as f64) / 1024.0,
            peaks[1] as f64 / 1024.0,
            (peaks[1] as f64 - base[1] as f64) / 1024.0,
        );
    }
    println!(
        "baseline RSS: agent {:.1} MiB, master {:.1} MiB; VmHWM at the end: agent {:.1} MiB, master {:.1} MiB",
        base[0] as f64 / 1024.0,
        base[1] as f64 / 1024.0,
        hwm[0] as f64 / 1024.0,
        hwm[1] as f64 / 1024.0
    );
    let growth = peak_snap
        .iter()
        .chain(&peak_restore)
        .zip(base.iter().chain(&base))
        .map(|(p, b)| p.saturating_sub(*b))
        .max()
        .unwrap_or(0);
    println!(
        "max RSS growth {:.1} MiB: {}",
        growth as f64 / 1024.0,
        if growth < 64 * 1024 {
            "within the 64 MiB target"
        } else {
            "OVER the 64 MiB target"
        }
    );
    master.mcp(&["undeploy", "benchdata"]);
    agent.stop();
}
