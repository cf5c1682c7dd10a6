//! An Azure Blob service on loopback for the storage suites: azurite, from the project's
//! `.cache/node` (`scripts/install-azurite.sh` installs it), with its well-known development
//! account; azure-storage-blob (Python) makes its containers, as a user would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::workspace;

/// Azurite's development account and its published key.
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An azurite Blob service on a free loopback port, stopped on drop.
pub struct AzureServer {
    process: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _data: tempfile::TempDir,
}

impl AzureServer {
    /// Starts azurite, or returns `None` with a loud message where `.cache/node` has none.
    pub fn start() -> anyhow::Result<Option<Self>> {
        let binary = workspace().join(".cache/node/node_modules/.bin/azurite-blob");
        if !binary.is_file() {
            eprintln!("SKIPPED: azurite is not installed; run scripts/setup-test-deps.sh (the test command does)");
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let data = tempfile::tempdir()?;
        let process = Command::new(binary)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--disableTelemetry"])
            .args(["--skipApiVersionCheck", "--location"])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting azurite")?;
        let server = Self { process, url: format!("http://127.0.0.1:{port}"), _data: data };
        crate::wait_for_port(port, "azurite")?;
        Ok(Some(server))
    }

    /// The variables that point Azure clients at the emulator's development account.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("AZURE_STORAGE_USE_EMULATOR", "true".into()), ("AZURITE_BLOB_STORAGE_URL", self.url.clone())]
    }

    /// Creates the container `name` with azure-storage-blob.
    pub fn create_container(&self, name: &str) -> anyhow::Result<()> {
        let site: PathBuf = workspace().join(".cache/python/site");
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={}/{ACCOUNT};",
            self.url
        );
        let script = "import sys\nfrom azure.storage.blob import BlobServiceClient\n\
                      BlobServiceClient.from_connection_string(sys.argv[1]).create_container(sys.argv[2])";
        let output =
            Command::new("python3").args(["-c", script, &connection, name]).env("PYTHONPATH", site).output()?;
        anyhow::ensure!(
            output.status.success(),
            "creating container {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

impl Drop for AzureServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
