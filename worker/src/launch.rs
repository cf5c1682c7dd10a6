//! `train --local-ranks N`: one command that runs a data-parallel job as N processes on loopback,
//! the way the operator runs N pods. Each child is this binary's `train` with the rank's
//! environment (`LANTERN_RANK`, `LANTERN_WORLD_SIZE`, `LANTERN_COORDINATOR` on a free loopback
//! port, `LANTERN_ADDRESS`: the coordinator's for rank 0, a free loopback port for the others)
//! and an equal share of the compute threads. SIGTERM is passed
//! on to every rank; the exit code is the first failing rank's, else 0.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Context;
use lantern_contract::env;

/// Runs `ranks` processes of the job in `config` and waits for all of them.
pub async fn run(config: &Path, ranks: usize, threads: usize) -> anyhow::Result<i32> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("finding a free port for rank 0")?
        .port();
    let executable = std::env::current_exe().context("locating this executable")?;
    let threads_per_rank = (threads / ranks).max(1);
    let mut children: Vec<Child> = Vec::with_capacity(ranks);
    let coordinator = format!("127.0.0.1:{port}");
    for rank in 0..ranks {
        let address = if rank == 0 { coordinator.as_str() } else { "127.0.0.1:0" };
        let child = Command::new(&executable)
            .args(["--compute-threads", &threads_per_rank.to_string(), "train", "--config"])
            .arg(config)
            .env(env::RANK, rank.to_string())
            .env(env::WORLD_SIZE, ranks.to_string())
            .env(env::COORDINATOR, &coordinator)
            .env(env::ADDRESS, address)
            .spawn()
            .with_context(|| format!("starting rank {rank}"))?;
        children.push(child);
    }
    let pids: Vec<String> =
        children.iter().enumerate().map(|(rank, c)| format!("rank {rank} pid {}", c.id())).collect();
    println!(
        "started {ranks} ranks ({threads_per_rank} compute threads each; {}), coordinator 127.0.0.1:{port}",
        pids.join(", ")
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut codes: Vec<Option<i32>> = vec![None; ranks];
    let mut forwarded = false;
    while codes.iter().any(Option::is_none) {
        tokio::select! {
            _ = term.recv(), if !forwarded => {
                forwarded = true;
                for child in &children {
                    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), rustix::process::Signal::TERM);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        for (rank, child) in children.iter_mut().enumerate() {
            if codes[rank].is_none()
                && let Some(status) = child.try_wait().with_context(|| format!("waiting for rank {rank}"))?
            {
                codes[rank] = Some(exit_code(rank, status));
            }
        }
    }
    Ok(codes.into_iter().flatten().find(|&code| code != 0).unwrap_or(0))
}

/// A rank's exit code, said when it is not 0; a rank killed by a signal counts as 128 + the
/// signal's number, as a shell reports it.
fn exit_code(rank: usize, status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => 0,
        (Some(code), _) => {
            eprintln!("rank {rank} exited with code {code}");
            code
        }
        (None, signal) => {
            let signal = signal.unwrap_or(0);
            eprintln!("rank {rank} was killed by signal {signal}");
            128 + signal
        }
    }
}
