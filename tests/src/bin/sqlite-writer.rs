//! Test helper: a SQLite workload in WAL mode.
//!
//! `sqlite-writer write <db>` inserts rows (small transactions, ids 1, 2,
//! 3, … without gaps) until SIGTERM/SIGINT; it runs as the process of a
//! test service's container (through the host's dynamic loader, copied
//! into a volume), so stopping the service stops the writes.
//!
//! `sqlite-writer check <db> [--upto N]` prints JSON: rows, max id,
//! `PRAGMA integrity_check`, and a SHA-256 over every row (or the rows with
//! id ≤ N), so two copies can be compared.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("write") if args.len() == 3 => write(&args[2]),
        Some("check") if args.len() == 3 => check(&args[2], None),
        Some("check") if args.len() == 5 && args[3] == "--upto" => match args[4].parse() {
            Ok(n) => check(&args[2], Some(n)),
            Err(_) => Err("--upto takes a row id".into()),
        },
        _ => Err("usage: sqlite-writer write <db> | check <db> [--upto N]".into()),
    };
    if let Err(e) = r {
        eprintln!("sqlite-writer: {e}");
        std::process::exit(1);
    }
}

fn write(db: &str) -> Result<(), String> {
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let conn = Connection::open(db).map_err(|e| format!("{db}: {e}"))?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if mode != "wal" {
        return Err(format!("journal_mode is {mode}, not wal"));
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, payload BLOB NOT NULL)",
    )
    .map_err(|e| e.to_string())?;
    eprintln!("sqlite-writer: writing to {db}");
    while !STOP.load(Ordering::SeqCst) {
        let tx = conn.unchecked_transaction().map_err(|e| e.to_string())?;
        let next: i64 = tx
            .query_row("SELECT coalesce(max(id), 0) + 1 FROM ledger", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        for i in next..next + 20 {
            let payload: Vec<u8> = (0..256).map(|b| ((i * 31 + b) % 251) as u8).collect();
            tx.execute(
                "INSERT INTO ledger (id, n, payload) VALUES (?1, ?2, ?3)",
                rusqlite::params![i, i * 7, payload],
            )
            .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(3));
    }
    eprintln!("sqlite-writer: stopped");
    Ok(())
}

fn check(db: &str, upto: Option<i64>) -> Result<(), String> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| format!("{db}: {e}"))?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let limit = upto.unwrap_or(i64::MAX);
    let (rows, max_id): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(max(id), 0) FROM ledger WHERE id <= ?1",
            [limit],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let mut stmt = conn
        .prepare("SELECT id, n, payload FROM ledger WHERE id <= ?1 ORDER BY id")
        .map_err(|e| e.to_string())?;
    let mut q = stmt.query([limit]).map_err(|e| e.to_string())?;
    while let Some(row) = q.next().map_err(|e| e.to_string())? {
        let id: i64 = row.get(0).map_err(|e| e.to_string())?;
        let n: i64 = row.get(1).map_err(|e| e.to_string())?;
        let payload: Vec<u8> = row.get(2).map_err(|e| e.to_string())?;
        hasher.update(id.to_le_bytes());
        hasher.update(n.to_le_bytes());
        hasher.update(&payload);
    }
    println!(
        "{}",
        serde_json::json!({
            "rows": rows, "max_id": max_id, "integrity": integrity,
            "digest": hex::encode(hasher.finalize()),
        })
    );
    Ok(())
}
