//! Turns one `scripts/bench` run (loadgen results and criterion estimates) into the table of
//! targets, baselines and ratios in docs/PERFORMANCE.md.
//!
//! ```text
//! bench_report --results target/bench/results.jsonl --criterion target/criterion > report.md
//! bench_report --splice docs/PERFORMANCE.md --report report.md
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    results: Option<PathBuf>,
    #[arg(long)]
    criterion: Option<PathBuf>,
    /// 1 when the run was a smoke run (numbers are not meaningful).
    #[arg(long, default_value_t = 0)]
    smoke: u8,
    /// Replace the results section of this markdown file with `--report`.
    #[arg(long)]
    splice: Option<PathBuf>,
    #[arg(long)]
    report: Option<PathBuf>,
}

const BEGIN: &str = "<!-- results:begin -->";
const END: &str = "<!-- results:end -->";

/// Elements per second from a criterion bench (mean time per iteration).
fn crit_rate(dir: &Path, bench: &str, elements: f64) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(bench).join("new/estimates.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let ns = v["mean"]["point_estimate"].as_f64()?;
    Some(elements / (ns / 1e9))
}

struct Row {
    what: String,
    measured: String,
    baseline: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k/s", x / 1e3)
    } else {
        format!("{x:.0}/s")
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let (Some(doc), Some(report)) = (&a.splice, &a.report) {
        let text = std::fs::read_to_string(doc)?;
        let new = std::fs::read_to_string(report)?;
        let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
            anyhow::bail!("{} has no {BEGIN} ... {END} markers", doc.display());
        };
        let out = format!("{}{BEGIN}\n{new}{}", &text[..b], &text[e..]);
        std::fs::write(doc, out)?;
        return Ok(());
    }
    let results = a
        .results
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--results is required"))?;
    let crit = a
        .criterion
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    // A label measured in several rounds has one line per round.
    let mut r: HashMap<String, Vec<Value>> = HashMap::new();
    for line in std::fs::read_to_string(results)?.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line)
            && let Some(l) = v["label"].as_str()
        {
            r.entry(l.to_string()).or_default().push(v.clone());
        }
    }
    let get = |label: &str, field: &str| {
        let values: Vec<f64> = r
            .get(label)?
            .iter()
            .filter_map(|v| v[field].as_f64())
            .collect();
        median(values)
    };
    let mut rows = Vec::new();
    let mut ratio_row =
        |what: &str, m: Option<f64>, b: Option<f64>, target: f64, unit_ratio: bool| {
            let ratio = m.zip(b).filter(|(_, b)| *b > 0.0).map(|(m, b)| m / b);
            rows.push(Row {
                what: what.into(),
                measured: m.map(fmt_rate).unwrap_or("-".into()),
                baseline: b.map(fmt_rate).unwrap_or("-".into()),
                ratio: ratio
                    .map(|x| {
                        if unit_ratio {
                            format!("{:.0}%", x * 100.0)
                        } else {
                            format!("{x:.1}×")
                        }
                    })
                    .unwrap_or("-".into()),
                target: if target == 0.0 {
                    "(no target)".into()
                } else if unit_ratio {
                    format!("≥ {:.0}%", target * 100.0)
                } else {
                    format!("≥ {target}×")
                },
                met: ratio.map(|x| x >= target),
            });
        };
    let sign = crit_rate(&crit, "issuance/certificate_build_sign_encode", 1.0);
    let raw_sign = crit_rate(&crit, "issuance/raw_ed25519_sign", 1.0);
    ratio_row(
        "In-process issuance vs raw Ed25519 signing",
        sign,
        raw_sign,
        0.65,
        true,
    );
    let verify = crit_rate(&crit, "audit_verify/verify_chain", 10_000.0);
    let sha = crit_rate(&crit, "audit_verify/raw_sha256_same_bytes", 10_000.0);
    ratio_row(
        "Audit verify vs raw SHA-256, same bytes",
        verify,
        sha,
        0.25,
        true,
    );
    let fetch = get("broker_fetch", "ops_per_sec");
    ratio_row(
        "fetch vs sshd + ssh-keygen -s (DIY CA)",
        fetch,
        get("diy_fetch", "ops_per_sec"),
        20.0,
        false,
    );
    ratio_row(
        "fetch vs the broker's own noop",
        fetch,
        get("broker_noop", "ops_per_sec"),
        0.80,
        true,
    );
    // Against the transport's ceiling: a russh server that answers at once (examples/noop_server.rs).
    let noop_new = get("noop_server_new", "ops_per_sec");
    let whoami_reused = get("broker_whoami_reused", "ops_per_sec");
    ratio_row(
        "fetch vs a no-op russh server (new connection per call)",
        fetch,
        noop_new,
        0.80,
        true,
    );
    ratio_row(
        "whoami vs a no-op russh server, new connection per call",
        get("broker_noop", "ops_per_sec"),
        noop_new,
        0.90,
        true,
    );
    ratio_row(
        "whoami vs a no-op russh server, reused connections",
        whoami_reused,
        get("noop_server_reused", "ops_per_sec"),
        0.90,
        true,
    );
    ratio_row(
        "cert vs the broker's whoami, both on reused connections",
        get("broker_fetch-reuse", "ops_per_sec"),
        whoami_reused,
        0.40,
        true,
    );
    ratio_row(
        "cert --json (the helper's answer, with its audit proof) vs whoami, reused connections",
        get("broker_fetch-reuse-json", "ops_per_sec"),
        whoami_reused,
        0.40,
        true,
    );
    // Two brokers on a three-member etcd cluster, half the clients each (summed).
    let both = |label: &str| {
        Some(
            get(&format!("{label}_0"), "ops_per_sec")? + get(&format!("{label}_1"), "ops_per_sec")?,
        )
    };
    ratio_row(
        "cert, reused connections: two brokers on etcd vs one on sled",
        both("etcd_fetch_reuse"),
        get("broker_fetch-reuse", "ops_per_sec"),
        0.5,
        true,
    );
    ratio_row(
        "cycle: two brokers on etcd vs one on sled",
        both("etcd_cycle"),
        get("broker_cycle", "ops_per_sec"),
        0.0,
        true,
    );
    ratio_row(
        "fetch (new connection per call): two brokers on etcd vs one on sled",
        both("etcd_fetch"),
        fetch,
        0.0,
        true,
    );
    let mut plain = |what: &str,
                     measured: Option<f64>,
                     show: &dyn Fn(f64) -> String,
                     target: &str,
                     ok: &dyn Fn(f64) -> bool| {
        rows.push(Row {
            what: what.into(),
            measured: measured.map(show).unwrap_or("-".into()),
            baseline: "-".into(),
            ratio: "-".into(),
            target: target.into(),
            met: measured.map(ok),
        });
    };
    let ms = |x: f64| format!("{x:.1} ms");
    let mb = |kb: f64| format!("{:.1} MB", kb / 1024.0);
    plain(
        "fetch p99 latency",
        get("broker_fetch", "p99_ms"),
        &ms,
        "≤ 50 ms",
        &|x| x <= 50.0,
    );
    plain(
        "cycle (request → approve → cert), durable",
        get("broker_cycle", "ops_per_sec"),
        &fmt_rate,
        "≥ 1,500/s",
        &|x| x >= 1500.0,
    );
    plain(
        "Daemon RSS, idle",
        get("broker_rss_idle", "rss_kb"),
        &mb,
        "≤ 30 MB",
        &|x| x <= 30.0 * 1024.0,
    );
    plain(
        "Daemon RSS, peak under fetch",
        get("broker_rss_peak_after_fetch", "rss_kb"),
        &mb,
        "≤ 100 MB",
        &|x| x <= 100.0 * 1024.0,
    );
    plain(
        "Daemon RSS, peak after every load run",
        get("broker_rss_peak_after_all", "rss_kb"),
        &mb,
        "≤ 100 MB",
        &|x| x <= 100.0 * 1024.0,
    );
    plain(
        "Scale: daemon RSS, idle, on the seeded database",
        get("scale_rss_idle", "rss_kb"),
        &mb,
        "(no target)",
        &|_| true,
    );
    plain(
        "Scale: `requests --state pending` p50",
        get("scale_requests_pending", "p50_ms"),
        &ms,
        "< 10 ms",
        &|x| x < 10.0,
    );
    plain(
        "Scale: `status` for one member p50",
        get("scale_status_one_member", "p50_ms"),
        &ms,
        "fast (< 10 ms)",
        &|x| x < 10.0,
    );
    plain(
        "Scale: daemon start",
        get("scale_daemon_start", "ms"),
        &|x| format!("{x:.0} ms"),
        "< 1 s",
        &|x| x < 1000.0,
    );
    let kinstr = |x: f64| format!("{:.0} k instructions", x / 1e3);
    plain(
        "One `whoami` through `Broker::execute` (callgrind)",
        get("instructions_whoami", "per_call"),
        &kinstr,
        "(no target)",
        &|_| true,
    );
    plain(
        "One durable `cert` through `Broker::execute` (callgrind)",
        get("instructions_cert", "per_call"),
        &kinstr,
        "(no target)",
        &|_| true,
    );
    let us = |x: f64| format!("{x:.0} µs");
    plain(
        "Scale: inclusion proof over the whole log, p99",
        get("scale_proofs", "inclusion_p99_us"),
        &us,
        "< 1 ms",
        &|x| x < 1000.0,
    );
    plain(
        "Scale: consistency proof over the whole log, p99",
        get("scale_proofs", "consistency_p99_us"),
        &us,
        "< 1 ms",
        &|x| x < 1000.0,
    );
    let scale_rate = get("scale_audit_verify", "entries")
        .zip(get("scale_audit_verify", "ms"))
        .map(|(n, t)| n / (t.max(1.0) / 1000.0));
    ratio_row_at_scale(&mut rows, scale_rate, sha);

    let mut out = String::new();
    if a.smoke == 1 {
        out.push_str("_Smoke run: short durations and a small seed; the figures only prove the tools work._\n\n");
    }
    out.push_str("| What | Measured | Baseline (same run) | Ratio | Target | Met |\n|---|---|---|---|---|---|\n");
    for row in &rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.what, row.measured, row.baseline, row.ratio, row.target, met
        ));
    }
    out.push_str("\nLoad generator runs (all clients, whole run; the figures above take each run's median over its rounds):\n\n| Run | Round | Clients | ops/s | p50 | p95 | p99 | errors |\n|---|---|---|---|---|---|---|---|\n");
    let mut runs: Vec<(&String, &Value)> = r
        .iter()
        .flat_map(|(l, vs)| vs.iter().map(move |v| (l, v)))
        .filter(|(_, v)| v["ops_per_sec"].is_number())
        .collect();
    runs.sort_by_key(|(l, v)| (*l, v["round"].as_u64()));
    for (l, v) in runs {
        let round = v["round"].as_u64().map_or("-".into(), |n| n.to_string());
        out.push_str(&format!(
            "| {l} | {round} | {} | {} | {} ms | {} ms | {} ms | {} |\n",
            v["clients"], v["ops_per_sec"], v["p50_ms"], v["p95_ms"], v["p99_ms"], v["errors"]
        ));
    }
    out.push_str("\nOther criterion figures: ");
    let append = crit_rate(&crit, "audit_append/transaction_with_flush", 1.0);
    let committed = crit_rate(&crit, "audit_append/commit_only", 1.0);
    let policy = crit_rate(&crit, "policy/open_approve_authorize", 1.0);
    out.push_str(&format!(
        "audit append (one change + flush) {}, without the flush (the change only, written at the next flush) {}; policy open+approve+authorize {}.\n",
        append.map(fmt_rate).unwrap_or("-".into()),
        committed.map(fmt_rate).unwrap_or("-".into()),
        policy.map(fmt_rate).unwrap_or("-".into())
    ));
    if let Some(kb) = get("scale_db_size", "kb") {
        out.push_str(&format!(
            "Seeded database on disk: {:.0} MB.\n",
            kb / 1024.0
        ));
    }
    print!("{out}");
    Ok(())
}

/// The middle value (the mean of the two middle ones for an even count); None for none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn ratio_row_at_scale(rows: &mut Vec<Row>, rate: Option<f64>, sha: Option<f64>) {
    let ratio = rate.zip(sha).map(|(m, b)| m / b);
    rows.push(Row {
        what: "Scale: full offline `audit verify` vs raw SHA-256".into(),
        measured: rate.map(fmt_rate).unwrap_or("-".into()),
        baseline: sha.map(fmt_rate).unwrap_or("-".into()),
        ratio: ratio
            .map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or("-".into()),
        target: "≥ 25%".into(),
        met: ratio.map(|x| x >= 0.25),
    });
}
