//! An OCI registry on loopback for the storage suites: Debian's `docker-registry` (CNCF
//! distribution 2.8; `scripts/install-docker-registry.sh` installs it) on a free port with its
//! storage in a temporary directory: anonymous, behind an htpasswd login, or behind a token
//! service (`e2e/oci_token_server.py`) as public registries are.

use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// How the registry lets clients in.
#[derive(Clone, Copy)]
enum Login<'a> {
    Anonymous,
    /// HTTP Basic against an htpasswd file.
    Htpasswd {
        user: &'a str,
        password: &'a str,
    },
    /// Bearer tokens from a token service that checks these credentials.
    TokenService {
        user: &'a str,
        password: &'a str,
    },
}

/// A registry process (and its token service), stopped on drop.
pub struct OciRegistry {
    process: Child,
    token_service: Option<Child>,
    /// `127.0.0.1:PORT`, as an `oci://` URI names it.
    pub address: String,
    _data: tempfile::TempDir,
}

impl OciRegistry {
    /// Starts an anonymous registry, or returns `None` with a loud message where it is not
    /// installed.
    pub fn start() -> anyhow::Result<Option<Self>> {
        Self::launch(Login::Anonymous)
    }

    /// Starts a registry that answers only `user` with `password` (htpasswd, the bcrypt hash
    /// made with the Python site's `bcrypt`).
    pub fn start_with_login(user: &str, password: &str) -> anyhow::Result<Option<Self>> {
        Self::launch(Login::Htpasswd { user, password })
    }

    /// Starts a registry that takes only Bearer tokens, from a token service on loopback that
    /// issues them to `user` with `password`.
    pub fn start_with_token_service(user: &str, password: &str) -> anyhow::Result<Option<Self>> {
        Self::launch(Login::TokenService { user, password })
    }

    fn launch(login: Login<'_>) -> anyhow::Result<Option<Self>> {
        let Ok(binary) = which("docker-registry") else {
            eprintln!("SKIPPED: docker-registry is not installed; run scripts/setup-test-deps.sh as root");
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let data = tempfile::tempdir()?;
        let mut auth = String::new();
        let mut token_service = None;
        if let Login::TokenService { user, password } = login {
            if !crate::workspace().join(".cache/python/site/cryptography").is_dir() {
                eprintln!("SKIPPED: the token service needs cryptography; run scripts/install-python-clients.sh");
                return Ok(None);
            }
            let token_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let certificate = data.path().join("token.pem");
            let script = crate::workspace().join("e2e/oci_token_server.py");
            let certificate_path = certificate.to_str().context("a UTF-8 path")?;
            let process = Command::new("python3")
                .arg(script)
                .args([&token_port.to_string(), certificate_path, "lantern-tokens", user, password])
                .env("PYTHONPATH", crate::workspace().join(".cache/python/site"))
                .stdout(Stdio::null())
                .spawn()
                .context("starting the token service")?;
            token_service = Some(process);
            crate::wait_for_port(token_port, "the token service")?;
            auth = format!(
                "auth:\n  token: {{realm: \"http://127.0.0.1:{token_port}/token\", service: lantern-registry, \
                 issuer: lantern-tokens, rootcertbundle: {certificate_path}}}\n"
            );
        }
        if let Login::Htpasswd { user, password } = login {
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
        let registry = Self { process, token_service, address: format!("127.0.0.1:{port}"), _data: data };
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
        for process in std::iter::once(&mut self.process).chain(self.token_service.as_mut()) {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}
