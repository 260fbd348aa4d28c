//! `drover-chaos`: runs Drover under seeded random faults and checks that nothing was lost.
//! Exit status 0 when every check passed, 1 when one failed (the seed to reproduce it is
//! printed), 2 when the runner itself could not run.

use clap::Parser;
use drover_tests::chaos;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "drover-chaos",
    about = "Fault-injection run: two coordinators, four workers behind proxies, a private \
             PostgreSQL; kills, pauses, partitions and database restarts at seeded random \
             moments, then checks every job's outcome, attempts, side effects and logs"
)]
struct Cli {
    /// Seed for the workload and the faults; random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Jobs to submit.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// How long to inject faults, e.g. 60s, 10m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long jobs may take to finish after the faults stop.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    drain_limit: Duration,
    /// Keep processes' logs, the ledger and the database here (default: a temporary
    /// directory, removed at the end).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Put every process on a host of its own on a virtual network (Linux network
    /// namespaces; needs root): link faults become real link downs, netem or bandwidth
    /// limits, and link flaps.
    #[arg(long)]
    netns: bool,
    /// Repeat with seed, seed+1, … until one fails or this many runs passed.
    #[arg(long, default_value_t = 1)]
    runs: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover-chaos: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let first = cli.seed.unwrap_or_else(rand::random);
    for n in 0..cli.runs {
        let cfg = chaos::Config {
            seed: first.wrapping_add(n as u64),
            jobs: cli.jobs,
            chaos: cli.duration,
            drain_limit: cli.drain_limit,
            dir: cli.dir.as_ref().map(|d| d.join(format!("run-{n}"))),
            netns: cli.netns,
        };
        eprintln!(
            "drover-chaos: run {}/{}, seed {}, {} jobs, faults for {:?}",
            n + 1,
            cli.runs,
            cfg.seed,
            cfg.jobs,
            cfg.chaos
        );
        match rt.block_on(chaos::run(&cfg)) {
            Ok(report) => {
                println!("{report}");
                if !report.ok() {
                    return ExitCode::FAILURE;
                }
            }
            Err(e) => {
                eprintln!("drover-chaos: seed {}: {e:#}", cfg.seed);
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}
