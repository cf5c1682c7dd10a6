//! An S3 server on loopback for the storage suites: moto in server mode, from the project's
//! Python site (`scripts/setup-test-deps.sh` installs it), and boto3 to do to its buckets what a
//! user would (`e2e/s3_bucket.py`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::workspace;

/// A moto S3 server on a free loopback port, stopped on drop.
pub struct S3Server {
    process: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    site: PathBuf,
}

impl S3Server {
    /// Starts moto, or returns `None` with a loud message where the project's Python site has
    /// no moto (the test command installs it).
    pub fn start() -> anyhow::Result<Option<Self>> {
        let site = workspace().join(".cache/python/site");
        if !site.join("moto").is_dir() {
            eprintln!("SKIPPED: moto is not installed; run scripts/setup-test-deps.sh (the test command does)");
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let process = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONPATH", &site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto")?;
        let server = Self { process, url: format!("http://127.0.0.1:{port}"), site };
        crate::wait_for_port(port, "moto")?;
        Ok(Some(server))
    }

    /// The standard variables that point S3 clients at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "lantern".into()),
            ("AWS_SECRET_ACCESS_KEY", "lantern-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Runs `s3_bucket.py ARGS` (boto3) against this server: `create BUCKET`, `keys BUCKET`,
    /// `put BUCKET KEY TEXT`. Returns its stdout.
    pub fn bucket(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("python3")
            .arg(workspace().join("e2e/s3_bucket.py"))
            .args(args)
            .env("PYTHONPATH", &self.site)
            .envs(self.env())
            .output()?;
        anyhow::ensure!(output.status.success(), "s3_bucket.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
