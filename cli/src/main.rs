//! `lantern`: the everyday flows from a terminal, with the user's kubeconfig (kube-rs). Installed
//! on the `PATH` as `kubectl-lantern` (a link), it is also the kubectl plugin `kubectl lantern`.
//!
//! - `lantern finetune --base MODEL[:VERSION] --data FILE.jsonl [--eval FILE] [method flags]`:
//!   checks the data, puts it in a ConfigMap the job owns, creates the TrainingJob and follows it
//!   with a progress bar and a line per published version ([`finetune`]). Exit code 0 succeeded,
//!   1 failed, 2 an error (a bad data file: nothing created), 3 detached (Ctrl-C, `--detach`).
//! - `lantern status NAME [--watch] [--timeout 10m]`: an InferenceService's versions, traffic
//!   split, rollout step and the gate's verdicts; with `--watch`, every change until the rollout
//!   settles. The exit code is the outcome, as Argo Rollouts' `status` gives it ([`Health`]).
//! - `lantern promote|abort NAME [VERSION]`: writes `spec.rollout.promote` or `abort` (the
//!   current canary when no version is given) and waits for the operator's answer: its
//!   `ManualOverride` condition, printed.
//! - `lantern pin NAME VERSION` / `lantern pin NAME --clear`: serves exactly that version, or
//!   goes back to rollouts.
//! - `lantern curves JOB`: the TrainingJob's loss over its steps (`status.history`) and each
//!   version's held-out metrics, drawn in the terminal ([`plot`]).
//! - `lantern chat NAME[:VERSION|:LABEL] [--url URL]`: an interactive, streaming chat over the
//!   service's OpenAI API ([`chat`]).

mod chat;
mod finetune;
mod plot;
mod status;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "lantern", version, about = "Watch and steer Lantern's InferenceServices and TrainingJobs")]
struct Args {
    /// The namespace; default: the kubeconfig context's.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune a served model on a JSONL file and follow the job. Exit code: 0 succeeded, 1
    /// failed, 2 an error, 3 detached (Ctrl-C or --detach; the job goes on).
    Finetune(finetune::Options),
    /// Versions, traffic split, rollout step and verdicts of an InferenceService. Exit code: 0
    /// healthy, 1 degraded (the last rollout rolled back, or not Ready), 2 an error, 3 still
    /// rolling out (without --watch, or when --timeout passed).
    Status {
        name: String,
        /// Follow every change until the rollout settles.
        #[arg(short, long)]
        watch: bool,
        /// With --watch, give up after this long (`90s`, `10m`, `1h`).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Promote the canary now (or the named version, which must be the canary).
    Promote { name: String, version: Option<u64> },
    /// Roll the canary back now (or the named version, which must be the canary).
    Abort { name: String, version: Option<u64> },
    /// Serve exactly VERSION, with no rollout; --clear goes back to rollouts.
    Pin {
        name: String,
        #[arg(required_unless_present = "clear")]
        version: Option<u64>,
        #[arg(long, conflicts_with = "version")]
        clear: bool,
    },
    /// Chat with a service's model (or one version or label of it), streaming its answers.
    Chat {
        /// NAME, NAME:VERSION or NAME:LABEL.
        target: String,
        /// Where the service answers (e.g. after `kubectl port-forward svc/NAME 8500`); default:
        /// its Service's cluster IP.
        #[arg(long)]
        url: Option<String>,
        /// Sampling temperature (0: greedy); default: the server's.
        #[arg(long)]
        temperature: Option<f64>,
        /// Most tokens per answer; default: the server's.
        #[arg(long)]
        max_tokens: Option<u32>,
    },
    /// Draw a TrainingJob's loss per step and its versions' held-out metrics.
    Curves {
        job: String,
        /// Columns of the plot.
        #[arg(long, default_value_t = 72)]
        width: usize,
    },
}

/// `90s`, `10m`, `1h` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 90s, 10m or 1h"))?;
    let seconds = match unit {
        "s" => value,
        "m" => value * 60,
        "h" => value * 3600,
        _ => return Err(format!("{text:?} has an unknown unit; use s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(status::Health::Error as u8)
        }
    }
}

/// The kubeconfig's client, and the namespace: `--namespace` or the context's.
async fn connect(namespace: Option<String>) -> anyhow::Result<(kube::Client, String)> {
    let client =
        kube::Client::try_default().await.map_err(|e| anyhow::anyhow!("connecting with the kubeconfig: {e}"))?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    Ok((client, namespace))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let namespace = args.namespace;
    let health = match args.command {
        Command::Finetune(options) => {
            // The data is checked before the cluster is reached: a bad file creates nothing.
            let data = finetune::read_data(&options)?;
            let (client, namespace) = connect(namespace).await?;
            finetune::finetune(&client, &namespace, &options, data).await?
        }
        Command::Status { name, watch, timeout } => {
            let (client, namespace) = connect(namespace).await?;
            status::status(&client, &namespace, &name, watch, timeout).await?
        }
        Command::Promote { name, version } => {
            let (client, namespace) = connect(namespace).await?;
            status::steer(&client, &namespace, &name, "promote", version).await?
        }
        Command::Abort { name, version } => {
            let (client, namespace) = connect(namespace).await?;
            status::steer(&client, &namespace, &name, "abort", version).await?
        }
        Command::Pin { name, version, clear } => {
            let (client, namespace) = connect(namespace).await?;
            status::pin(&client, &namespace, &name, version.filter(|_| !clear)).await?
        }
        Command::Curves { job, width } => {
            let (client, namespace) = connect(namespace).await?;
            plot::curves(&client, &namespace, &job, width).await?
        }
        Command::Chat { target, url, temperature, max_tokens } => {
            let (client, namespace) = connect(namespace).await?;
            let sampling = chat::Sampling { temperature, max_tokens };
            chat::chat(&client, &namespace, &target, url, sampling).await?
        }
    };
    Ok(ExitCode::from(health as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_flags_write_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").is_err());
    }
}
