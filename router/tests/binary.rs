//! The `lantern-router` binary as the operator runs it: flags parsed, both ports bound, the
//! admin port answering, a request to a pod that refuses connections refused in turn, a clean
//! exit on SIGTERM, and a TLS key that does not fit refused at start. (The e2e suites run this binary in router pods; building it here is
//! what puts it beside them.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `GET path` over HTTP/1.1, retried until the server answers (up to 10 s); the whole response.
fn get(addr: SocketAddr, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let request = format!("GET {path} HTTP/1.1\r\nhost: router\r\nconnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            return response;
        }
        assert!(Instant::now() < deadline, "nothing answered on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[test]
fn the_binary_serves_its_ports_refuses_for_a_dead_pod_and_exits_cleanly_on_sigterm() {
    let (listen, admin, dead) = (free_port(), free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_lantern-router"))
        .args(["--listen", &listen.to_string(), "--admin-listen", &admin.to_string()])
        .args(["--backend", &dead.to_string(), "--hold-seconds", "1", "--models", "adder"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut router = Router(child);
    assert!(get(admin, "/healthz").ends_with("ok"));
    let stats = get(admin, "/stats");
    assert!(stats.contains(&format!("\"address\":\"{dead}\"")), "{stats}");
    let refused = get(listen, "/v2/models/adder/ready");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    let unknown = get(listen, "/v2/models/other/ready");
    assert!(
        unknown.starts_with("HTTP/1.1 404") && unknown.contains(r#"model \"other\" is not served here"#),
        "{unknown}"
    );
    let metrics = get(admin, "/metrics");
    assert!(metrics.contains("lantern_router_ready_pods 1"), "{metrics}");

    let pid = router.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = router.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the router did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn a_key_that_does_not_fit_its_certificate_stops_the_router_with_the_reason() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tls/fixtures");
    let output = Command::new(env!("CARGO_BIN_EXE_lantern-router"))
        .args(["--listen", &free_port().to_string(), "--admin-listen", &free_port().to_string()])
        .args(["--backend", &free_port().to_string()])
        .arg("--tls-cert-file")
        .arg(fixtures.join("cert.pem"))
        .arg("--tls-key-file")
        .arg(fixtures.join("other-key.pem"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("setting up TLS") && said.contains("the certificate and key do not fit"), "{said}");
}
