//! Where the CPU goes: per-process CPU time from `/proc/<pid>/stat` before and after a window,
//! grouped by what the process is (each service, PostgreSQL, the broker, ...), and the whole
//! machine's busy and idle time from `/proc/stat`.
//!
//! A process that started inside the window counts with its whole time; one that ended inside
//! it is lost (its time went to its parent's `cutime`, which is not read) and only counted.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use serde::Serialize;

use super::stats::{round1, round2};

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    pub ppid: u32,
    /// utime + stime, clock ticks.
    pub ticks: u64,
    /// Clock ticks after boot: with the pid, tells a reused pid from the old process.
    pub starttime: u64,
}

/// Parses one `/proc/<pid>/stat` line. The comm (field 2) is in parentheses and may itself hold
/// spaces and ')', so the fields are counted from the *last* ')'.
pub fn parse_proc_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_owned();
    // After the comm: field 3 (state) is index 0.
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        comm,
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)?,
        starttime: field(22)?,
    })
}

/// The machine's CPU time, clock ticks summed over every core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    pub busy: u64,
    pub idle: u64,
    pub iowait: u64,
    pub cores: usize,
}

/// Parses `/proc/stat`: the `cpu` line (user nice system idle iowait irq softirq steal ...;
/// guest time is already inside user) and the number of `cpuN` lines.
pub fn parse_machine(text: &str) -> Option<MachineTicks> {
    let mut out = None;
    let mut cores = 0;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("cpu") => {
                let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
                let at = |i: usize| v.get(i).copied().unwrap_or(0);
                out = Some(MachineTicks {
                    busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
                    idle: at(3) + at(4),
                    iowait: at(4),
                    cores: 0,
                });
            }
            Some(c) if c.starts_with("cpu") => cores += 1,
            _ => {}
        }
    }
    out.map(|m| MachineTicks {
        cores: cores.max(1),
        ..m
    })
}

/// The group a process is reported under.
pub fn classify(pid: u32, stat: &ProcStat, cmdline: &str, me: u32) -> String {
    let comm = stat.comm.as_str();
    let has = |s: &str| cmdline.contains(s);
    let group = if pid == me || stat.ppid == me {
        "shopctl (bench)"
    } else if let Some(service) = comm.strip_prefix("shop-") {
        return service.to_owned();
    } else if comm == "shopctl" {
        "shopctl (other)"
    } else if comm == "postgres" || comm == "postmaster" {
        "postgres"
    } else if comm == "java" && (has("kafka.Kafka") || has("kafka-server")) {
        "kafka"
    } else if comm == "java" && has("opensearch") {
        "opensearch"
    } else if comm == "redis-server" {
        "redis"
    } else if comm.starts_with("clickhouse") {
        "clickhouse"
    } else if comm.starts_with("ferretdb") || has("ferretdb") || has("nx-27017") || has("nx27017") {
        "mongo-wire"
    } else {
        "other"
    };
    group.to_owned()
}

/// Every process's CPU time and the machine's, at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    /// (pid, starttime) -> (group, ticks)
    procs: HashMap<(u32, u64), (String, u64)>,
    machine: MachineTicks,
}

/// Reads /proc (a few hundred small files: milliseconds).
pub fn sample() -> Sample {
    let me = std::process::id();
    let mut procs = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let Some(stat) = std::fs::read_to_string(path.join("stat"))
                .ok()
                .as_deref()
                .and_then(parse_proc_stat)
            else {
                continue;
            };
            let cmdline = std::fs::read(path.join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            let group = classify(pid, &stat, &cmdline, me);
            procs.insert((pid, stat.starttime), (group, stat.ticks));
        }
    }
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .as_deref()
        .and_then(parse_machine)
        .unwrap_or_default();
    Sample {
        at: Instant::now(),
        procs,
        machine,
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that cannot run).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupCpu {
    pub group: String,
    pub processes: usize,
    pub cpu_s: f64,
    /// CPU milliseconds per completed saga.
    pub cpu_ms_per_saga: f64,
    /// Of the whole machine (every core) over the window.
    pub machine_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub window_s: f64,
    pub cores: usize,
    pub machine_busy_s: f64,
    pub machine_idle_s: f64,
    pub machine_iowait_s: f64,
    pub machine_busy_pct: f64,
    pub machine_cpu_ms_per_saga: f64,
    /// Processes seen before but gone after (their time in the window is not counted).
    pub vanished_processes: usize,
    /// Busiest first.
    pub groups: Vec<GroupCpu>,
}

/// The CPU spent between `before` and `after`, per group, against `completed` sagas.
pub fn diff(before: &Sample, after: &Sample, completed: usize, tck: f64) -> CpuReport {
    let window_s = after.at.duration_since(before.at).as_secs_f64();
    let cores = after.machine.cores.max(1);
    let capacity = window_s * cores as f64;
    let mut groups: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for (key, (group, ticks)) in &after.procs {
        let was = before.procs.get(key).map_or(0, |(_, t)| *t);
        let g = groups.entry(group.as_str()).or_default();
        g.0 += 1;
        g.1 += ticks.saturating_sub(was);
    }
    let vanished = before
        .procs
        .keys()
        .filter(|k| !after.procs.contains_key(k))
        .count();
    let per_saga = |s: f64| {
        if completed > 0 {
            round2(s * 1000.0 / completed as f64)
        } else {
            0.0
        }
    };
    let pct = |s: f64| {
        if capacity > 0.0 {
            round1(s / capacity * 100.0)
        } else {
            0.0
        }
    };
    let mut groups: Vec<GroupCpu> = groups
        .into_iter()
        .map(|(group, (processes, ticks))| {
            let s = ticks as f64 / tck;
            GroupCpu {
                group: group.to_owned(),
                processes,
                cpu_s: round2(s),
                cpu_ms_per_saga: per_saga(s),
                machine_pct: pct(s),
            }
        })
        .collect();
    groups.sort_by(|a, b| b.cpu_s.total_cmp(&a.cpu_s));
    let m = |a: u64, b: u64| a.saturating_sub(b) as f64 / tck;
    let busy = m(after.machine.busy, before.machine.busy);
    CpuReport {
        window_s: round2(window_s),
        cores,
        machine_busy_s: round2(busy),
        machine_idle_s: round2(m(after.machine.idle, before.machine.idle)),
        machine_iowait_s: round2(m(after.machine.iowait, before.machine.iowait)),
        machine_busy_pct: pct(busy),
        machine_cpu_ms_per_saga: per_saga(busy),
        vanished_processes: vanished,
        groups,
    }
}

pub fn print(r: &CpuReport) {
    println!(
        "  cpu over {:.1} s x {} cores: machine busy {:.1} s ({:.1}%), idle {:.1} s (iowait {:.1} s), {:.2} ms CPU per completed saga",
        r.window_s,
        r.cores,
        r.machine_busy_s,
        r.machine_busy_pct,
        r.machine_idle_s,
        r.machine_iowait_s,
        r.machine_cpu_ms_per_saga
    );
    println!(
        "    {:<18} {:>5} {:>9} {:>12} {:>9}",
        "group", "procs", "cpu s", "ms/saga", "% machine"
    );
    for g in r.groups.iter().filter(|g| g.cpu_s > 0.0) {
        println!(
            "    {:<18} {:>5} {:>9.2} {:>12.2} {:>8.1}%",
            g.group, g.processes, g.cpu_s, g.cpu_ms_per_saga, g.machine_pct
        );
    }
    if r.vanished_processes > 0 {
        println!(
            "    ({} processes ended inside the window; their time is not counted)",
            r.vanished_processes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comm_with_spaces_and_parentheses_is_read_up_to_its_last_paren() {
        let line = "4242 (my (odd) proc) S 17 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 987654 123456789 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_proc_stat(line).unwrap();
        assert_eq!(s.comm, "my (odd) proc");
        assert_eq!(s.ppid, 17);
        assert_eq!(s.ticks, 325);
        assert_eq!(s.starttime, 987_654);
        assert_eq!(parse_proc_stat("12 (truncated"), None);
        assert_eq!(parse_proc_stat("12 (x) S 1 2"), None);
    }

    #[test]
    fn machine_time_counts_iowait_as_idle_and_counts_cores() {
        let text = "cpu  100 5 50 1000 20 3 2 1 0 0\n\
                    cpu0 50 2 25 500 10 1 1 0 0 0\n\
                    cpu1 50 3 25 500 10 2 1 1 0 0\n\
                    intr 12345\nctxt 999\n";
        let m = parse_machine(text).unwrap();
        assert_eq!(m.busy, 100 + 5 + 50 + 3 + 2 + 1);
        assert_eq!(m.idle, 1020);
        assert_eq!(m.iowait, 20);
        assert_eq!(m.cores, 2);
    }

    #[test]
    fn processes_are_grouped_by_what_they_are() {
        let p = |comm: &str| ProcStat {
            comm: comm.into(),
            ppid: 1,
            ticks: 0,
            starttime: 0,
        };
        assert_eq!(classify(10, &p("shop-order"), "", 99), "order");
        assert_eq!(
            classify(10, &p("postgres"), "postgres: shop", 99),
            "postgres"
        );
        assert_eq!(
            classify(
                10,
                &p("java"),
                "java -cp x kafka.Kafka server.properties",
                99
            ),
            "kafka"
        );
        assert_eq!(
            classify(
                10,
                &p("java"),
                "java org.opensearch.bootstrap.OpenSearch",
                99
            ),
            "opensearch"
        );
        assert_eq!(
            classify(10, &p("python3"), "python3 -m nx-27017", 99),
            "mongo-wire"
        );
        assert_eq!(classify(99, &p("shopctl"), "", 99), "shopctl (bench)");
        assert_eq!(
            classify(10, &p("shopctl"), "shopctl check", 99),
            "shopctl (other)"
        );
        assert_eq!(classify(10, &p("bash"), "bash", 99), "other");
    }

    #[test]
    fn new_processes_count_whole_and_the_report_divides_by_sagas() {
        let at = Instant::now();
        let machine = |busy, idle| MachineTicks {
            busy,
            idle,
            iowait: 0,
            cores: 2,
        };
        let before = Sample {
            at,
            procs: HashMap::from([
                ((1, 5), ("order".to_owned(), 100)),
                ((2, 6), ("other".to_owned(), 10)),
            ]),
            machine: machine(1000, 1000),
        };
        let after = Sample {
            at: at + std::time::Duration::from_secs(10),
            procs: HashMap::from([
                ((1, 5), ("order".to_owned(), 400)),
                ((3, 7), ("postgres".to_owned(), 200)),
            ]),
            machine: machine(1800, 2200),
        };
        let r = diff(&before, &after, 100, 100.0);
        assert_eq!(r.vanished_processes, 1);
        assert_eq!(r.groups[0].group, "order");
        assert_eq!(r.groups[0].cpu_s, 3.0);
        assert_eq!(r.groups[0].cpu_ms_per_saga, 30.0);
        assert_eq!(r.groups[0].machine_pct, 15.0);
        assert_eq!(r.groups[1].cpu_s, 2.0);
        assert_eq!(r.machine_busy_s, 8.0);
        assert_eq!(r.machine_busy_pct, 40.0);
    }
}
