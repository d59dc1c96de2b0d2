//! CPU time by process, sampled from Linux's `/proc` while a benchmark runs, so that
//! `mesh bench-saga` can say where an order's CPU goes: each `mesh serve` child, Postgres (the
//! backends connected to the run's database, and apart from them the server's own processes:
//! WAL writer, checkpointer, ...), Redis, and the bench's own clients. Backends of other
//! databases (other work on a shared server) are left out: a backend's process title
//! (`postgres: <user> <database> <client> <state>`) names its database. Where there is no `/proc`
//! it reports nothing.
//!
//! Postgres backends come and go with connection pools, so the sampler reads every process every
//! 250 ms and keeps each one's last reading; a process already running at the start counts from
//! its first reading, one started later from zero.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One process's readings.
#[derive(Debug, Clone)]
struct Readings {
    group: String,
    /// CPU seconds not to count (its reading at the start, or zero if it started later).
    baseline: f64,
    last: f64,
}

/// A running sampler; [`CpuSampler::finish`] stops it and sums the CPU time by group.
#[derive(Debug)]
pub(crate) struct CpuSampler {
    stop: CancellationToken,
    task: JoinHandle<BTreeMap<u32, Readings>>,
}

impl CpuSampler {
    /// Starts sampling. `named` gives the group of processes known by pid (the bench's
    /// children); other processes count as `postgres` (backends of `database`), `postgres
    /// server` (its processes that serve no one database) or `redis` by their command name, this
    /// process as `bench clients`, and the rest are ignored.
    pub(crate) fn start(named: BTreeMap<u32, String>, database: String) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        // The first reading is taken now, so what runs after `start` returns is counted.
        let mut seen: BTreeMap<u32, Readings> = BTreeMap::new();
        sample(&named, &database, &mut seen, true);
        let task = tokio::task::spawn_blocking(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                sample(&named, &database, &mut seen, false);
                if token.is_cancelled() {
                    return seen;
                }
            }
        });
        Self { stop, task }
    }

    /// Stops sampling; CPU seconds by group, largest first (empty without `/proc`).
    pub(crate) async fn finish(self) -> Vec<(String, f64)> {
        self.stop.cancel();
        let Ok(seen) = self.task.await else {
            return Vec::new();
        };
        let mut by_group: BTreeMap<String, f64> = BTreeMap::new();
        for r in seen.values() {
            *by_group.entry(r.group.clone()).or_default() += (r.last - r.baseline).max(0.0);
        }
        let mut out: Vec<(String, f64)> = by_group.into_iter().collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// Reads every process once into `seen`; on the `first` reading a process's CPU so far is its
/// baseline, later newcomers start from zero.
fn sample(
    named: &BTreeMap<u32, String>,
    database: &str,
    seen: &mut BTreeMap<u32, Readings>,
    first: bool,
) {
    let own = std::process::id();
    for (pid, comm, cpu) in processes() {
        if let Some(r) = seen.get_mut(&pid) {
            r.last = cpu;
            continue;
        }
        let group = if pid == own {
            "bench clients".to_string()
        } else if let Some(name) = named.get(&pid) {
            name.clone()
        } else if comm.starts_with("postgres") {
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            match postgres_group(&String::from_utf8_lossy(&title), database) {
                Some(g) => g.to_string(),
                None => continue,
            }
        } else if comm == "redis-server" {
            "redis".to_string()
        } else {
            continue;
        };
        seen.insert(
            pid,
            Readings {
                group,
                baseline: if first { cpu } else { 0.0 },
                last: cpu,
            },
        );
    }
}

/// The group of a Postgres process by its title: `postgres` for a backend of `database`,
/// `None` for a backend of another database, `postgres server` for the rest (the postmaster,
/// WAL writer, checkpointer, autovacuum, ...).
fn postgres_group(title: &str, database: &str) -> Option<&'static str> {
    let title = title.trim_end_matches('\0').replace('\0', " ");
    let Some(rest) = title.strip_prefix("postgres: ") else {
        return Some("postgres server");
    };
    let mut words: Vec<&str> = rest.split_whitespace().collect();
    // With `cluster_name` set (Debian: `15/main`) the title starts with it and a colon.
    if words.first().is_some_and(|w| w.ends_with(':')) {
        words.remove(0);
    }
    // A backend: `<user> <database> <client>(<port>) <state>`; the client has a parenthesis
    // or is `[local]`.
    match words.as_slice() {
        [_, db, client, ..] if client.contains('(') || *client == "[local]" => {
            (*db == database).then_some("postgres")
        }
        _ => Some("postgres server"),
    }
}

/// Every readable process: pid, command name, CPU seconds (user + system) so far.
fn processes() -> Vec<(u32, String, f64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, cpu) = parse_stat(&stat)?;
        Some((pid, comm, cpu))
    })
    .collect()
}

/// The command name and CPU seconds of a `/proc/<pid>/stat` line. The name is in parentheses
/// and may itself hold spaces and parentheses, so the fields are counted from the last `)`:
/// utime and stime are the 12th and 13th after it.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut fields = stat.get(close + 2..)?.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((comm, (utime + stime) / TICKS_PER_SECOND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_runs_backends_from_other_databases_and_the_server() {
        let mine = "postgres: postgres mesh_bench_1 127.0.0.1(40312) idle\0";
        assert_eq!(postgres_group(mine, "mesh_bench_1"), Some("postgres"));
        assert_eq!(postgres_group(mine, "mesh_bench_2"), None);
        let named = "postgres: 15/main: postgres mesh_bench_1 127.0.0.1(40312) idle\0\0";
        assert_eq!(postgres_group(named, "mesh_bench_1"), Some("postgres"));
        assert_eq!(
            postgres_group("postgres: 15/main: checkpointer \0", "mesh_bench_1"),
            Some("postgres server")
        );
        assert_eq!(
            postgres_group("postgres: walwriter \0", "mesh_bench_1"),
            Some("postgres server")
        );
        assert_eq!(
            postgres_group("/usr/lib/postgresql/15/bin/postgres\0-D\0/var/lib", "x"),
            Some("postgres server")
        );
    }

    #[test]
    fn reads_the_name_and_cpu_time_even_with_odd_names() {
        let line = "4242 (postgres: mesh (x) idle) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 1000 10 18446744073709551615";
        let (comm, cpu) = parse_stat(line).expect("parses");
        assert_eq!(comm, "postgres: mesh (x) idle");
        assert!((cpu - 3.25).abs() < 1e-9, "{cpu}");
        assert_eq!(parse_stat("garbage"), None);
    }

    /// This process's CPU seconds so far.
    fn own_cpu() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        parse_stat(&stat).expect("parses").1
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_this_process_as_the_bench_clients() {
        if std::fs::metadata("/proc/self/stat").is_err() {
            eprintln!("SKIPPED: no /proc here");
            return;
        }
        let before = own_cpu();
        let sampler = CpuSampler::start(BTreeMap::new(), String::new());
        // Burn half a second of CPU (not of wall time: the machine may be busy with other tests).
        tokio::task::spawn_blocking(move || {
            let mut x = 0u64;
            while own_cpu() - before < 0.5 {
                for _ in 0..100_000 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
            }
            std::hint::black_box(x);
        })
        .await
        .unwrap();
        let by_group = sampler.finish().await;
        let burnt = own_cpu() - before;
        let clients = by_group
            .iter()
            .find(|(g, _)| g == "bench clients")
            .map(|(_, s)| *s)
            .expect("this process was sampled");
        // The sampler's last reading is taken after the burn, its first before it; readings
        // have a granularity of 10 ms.
        assert!(clients >= 0.48, "{clients} s of {burnt} s: {by_group:?}");
        assert!(
            clients <= burnt + 0.02,
            "{clients} s of {burnt} s: {by_group:?}"
        );
    }
}
