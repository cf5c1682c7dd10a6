//! An OCI registry on loopback for the storage suites: Debian's `docker-registry` (CNCF
//! distribution 2.8; `scripts/install-docker-registry.sh` installs it), anonymous, on a free port
//! with its storage in a temporary directory.

use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// A registry process, stopped on drop.
pub struct OciRegistry {
    process: Child,
    /// `127.0.0.1:PORT`, as an `oci://` URI names it.
    pub address: String,
    _data: tempfile::TempDir,
}

impl OciRegistry {
    /// Starts an anonymous registry, or returns `None` with a loud message where it is not
    /// installed.
    pub fn start() -> anyhow::Result<Option<Self>> {
        Self::launch(None)
    }

    /// Starts a registry that answers only `user` with `password` (htpasswd, the bcrypt hash
    /// made with the Python site's `bcrypt`).
    pub fn start_with_login(user: &str, password: &str) -> anyhow::Result<Option<Self>> {
        Self::launch(Some((user, password)))
    }

    fn launch(login: Option<(&str, &str)>) -> anyhow::Result<Option<Self>> {
        let Ok(binary) = which("docker-registry") else {
            eprintln!("SKIPPED: docker-registry is not installed; run scripts/setup-test-deps.sh as root");
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let data = tempfile::tempdir()?;
        let mut auth = String::new();
        if let Some((user, password)) = login {
            let htpasswd = data.path().join("htpasswd");
            let script = "import sys, bcrypt\nprint(sys.argv[1] + ':' + bcrypt.hashpw(sys.argv[2].encode(), \
                          bcrypt.gensalt(rounds=5)).decode())";
            let output = Command::new("python3")
                .args(["-c", script, user, password])
                .env("PYTHONPATH", crate::workspace().join(".cache/python/site"))
                .output()?;
            anyhow::ensure!(
                output.status.success(),
                "hashing the password: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::write(&htpasswd, &output.stdout)?;
            auth = format!("auth:\n  htpasswd: {{realm: lantern, path: {}}}\n", htpasswd.display());
        }
        let config = data.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n\
                 http: {{addr: \"127.0.0.1:{port}\"}}\n{auth}",
                data.path().join("blobs").display()
            ),
        )?;
        let process = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let registry = Self { process, address: format!("127.0.0.1:{port}"), _data: data };
        crate::wait_for_port(port, "docker-registry")?;
        Ok(Some(registry))
    }
}

/// `name` on the `PATH`.
fn which(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").context("no PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()).context("not found")
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
