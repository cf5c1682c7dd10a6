//! The process kubelet and Services through kube-rs: pods run as real processes (`/bin/sh`,
//! `python3`), restart as their policy says, read their environment and volumes, are probed,
//! stop gracefully, and are reached through a Service's cluster IP.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Client, Config};
use lantern_devcluster::kubelet::probe;
use lantern_devcluster::{DevCluster, Options};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

async fn start() -> (DevCluster, Client, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let mut options = Options::new(state.path()).image("shell", "/bin/sh");
    options.kubelet.back_off = Duration::from_millis(100);
    let cluster = DevCluster::start(options).await.unwrap();
    let client = Client::try_from(Config::new(cluster.url().parse().unwrap())).unwrap();
    (cluster, client, state)
}

async fn create<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &typed).await.unwrap()
}

/// Polls `name` until `check` holds of it (as JSON); fails with the last state seen.
async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let mut last = Value::Null;
    for _ in 0..600 {
        if let Ok(object) = api.get(name).await {
            last = serde_json::to_value(&object).unwrap();
            if check(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}: {what} did not happen; last seen:\n{}", serde_json::to_string_pretty(&last).unwrap());
}

fn shell_pod(name: &str, policy: &str, script: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "shell", "args": ["-c", script]}],
        },
    })
}

fn container(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

fn phase_is(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |pod| pod["status"]["phase"] == phase
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn logs(pods: &Api<Pod>, name: &str, previous: bool) -> String {
    pods.logs(name, &LogParams { previous, ..LogParams::default() }).await.unwrap()
}

#[tokio::test]
async fn containers_restart_as_their_policy_says_and_report_why_they_stopped() {
    let (cluster, client, _state) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(&pods, shell_pod("fails", "Never", "echo bye; exit 3")).await;
    create(&pods, shell_pod("succeeds", "OnFailure", "exit 0")).await;
    create(&pods, shell_pod("crashes", "Always", "echo run; exit 1")).await;
    create(&pods, shell_pod("killed", "Never", "kill -9 $$$$")).await;
    // Termination messages: the file at terminationMessagePath, or the log's end on failure.
    create(&pods, shell_pod("reports", "Never", "echo trained to step 40 > /dev/termination-log")).await;
    let mut custom = shell_pod("reports-elsewhere", "Never", "echo done > /tmp/why");
    custom["spec"]["containers"][0]["terminationMessagePath"] = json!("/tmp/why");
    create(&pods, custom).await;
    let mut falls_back = shell_pod("falls-back", "Never", "echo step 1; echo out of memory >&2; exit 2");
    falls_back["spec"]["containers"][0]["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    create(&pods, falls_back).await;
    // Fails once, then succeeds: the mark survives the restart in an emptyDir volume.
    let mut retries = shell_pod("retries", "OnFailure", "test -f $(MARK) || { touch $(MARK); exit 4; }");
    retries["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    retries["spec"]["containers"][0]["env"] = json!([{"name": "MARK", "value": "/scratch/mark"}]);
    retries["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/scratch"}]);
    create(&pods, retries).await;
    let mut unknown = shell_pod("unknown-image", "Always", "true");
    unknown["spec"]["containers"][0]["image"] = json!("registry.invalid/app:1");
    create(&pods, unknown).await;
    let mut missing = shell_pod("missing-program", "Never", "");
    missing["spec"]["containers"][0]["command"] = json!(["/no/such/program"]);
    create(&pods, missing).await;
    let mut unconfigured = shell_pod("unconfigured", "Always", "true");
    unconfigured["spec"]["containers"][0]["env"] =
        json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x"}}}]);
    create(&pods, unconfigured).await;

    let failed = wait_for(&pods, "fails", "Failed", phase_is("Failed")).await;
    assert_eq!(container(&failed)["state"]["terminated"]["exitCode"], 3);
    assert_eq!(container(&failed)["state"]["terminated"]["reason"], "Error");
    assert_eq!(logs(&pods, "fails", false).await, "bye\n");

    let succeeded = wait_for(&pods, "succeeds", "Succeeded", phase_is("Succeeded")).await;
    assert_eq!(container(&succeeded)["state"]["terminated"]["reason"], "Completed");
    assert!(succeeded["status"]["conditions"].as_array().unwrap().iter().any(|c| c["reason"] == "PodCompleted"));

    let crashing = wait_for(&pods, "crashes", "two restarts", |p| {
        container(p)["restartCount"].as_u64() >= Some(2) && container(p)["state"]["waiting"].is_object()
    })
    .await;
    assert_eq!(crashing["status"]["phase"], "Running");
    assert_eq!(container(&crashing)["state"]["waiting"]["reason"], "CrashLoopBackOff");
    assert_eq!(container(&crashing)["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(logs(&pods, "crashes", true).await, "run\n", "--previous reads the run before");

    let reported = wait_for(&pods, "reports", "Succeeded", phase_is("Succeeded")).await;
    assert_eq!(container(&reported)["state"]["terminated"]["message"], "trained to step 40\n");
    let elsewhere = wait_for(&pods, "reports-elsewhere", "Succeeded", phase_is("Succeeded")).await;
    assert_eq!(container(&elsewhere)["state"]["terminated"]["message"], "done\n");
    let fell_back = wait_for(&pods, "falls-back", "Failed", phase_is("Failed")).await;
    assert_eq!(container(&fell_back)["state"]["terminated"]["message"], "step 1\nout of memory");

    let killed = wait_for(&pods, "killed", "Failed", phase_is("Failed")).await;
    assert_eq!(container(&killed)["state"]["terminated"]["exitCode"], 137);
    assert_eq!(container(&killed)["state"]["terminated"]["signal"], 9);

    let retried = wait_for(&pods, "retries", "Succeeded", phase_is("Succeeded")).await;
    assert_eq!(container(&retried)["restartCount"], 1);
    assert_eq!(container(&retried)["lastState"]["terminated"]["exitCode"], 4);

    let pulling = wait_for(&pods, "unknown-image", "an image error", |p| {
        container(p)["state"]["waiting"]["reason"].as_str().is_some_and(|r| r.contains("ImagePull"))
    })
    .await;
    assert_eq!(pulling["status"]["phase"], "Pending");
    assert!(container(&pulling)["state"]["waiting"]["message"].as_str().unwrap().contains("--image"));

    let missing = wait_for(&pods, "missing-program", "Failed", phase_is("Failed")).await;
    let terminated = &container(&missing)["state"]["terminated"];
    assert_eq!((terminated["reason"].as_str(), terminated["exitCode"].as_i64()), (Some("StartError"), Some(128)));
    assert!(terminated["message"].as_str().unwrap().contains("/no/such/program"), "{terminated}");

    let unconfigured = wait_for(&pods, "unconfigured", "a config error", |p| {
        container(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })
    .await;
    assert_eq!(container(&unconfigured)["state"]["waiting"]["message"], "configmap \"absent\" not found");
    let events: Api<Event> = Api::namespaced(client, "default");
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    for reason in ["Scheduled", "Started", "BackOff", "Failed"] {
        assert!(reasons.iter().any(|r| r == reason), "no {reason} event among {reasons:?}");
    }
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn containers_see_their_environment_volumes_and_init_containers_work() {
    let (cluster, client, state) = start().await;
    let maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    create(&maps, json!({"metadata": {"name": "settings"}, "data": {"mode": "fast", "app.yaml": "replicas: 2"}})).await;
    create(&secrets, json!({"metadata": {"name": "token"}, "stringData": {"value": "s3cret"}})).await;
    let claim = json!({"metadata": {"name": "models"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    create(&claims, claim).await;
    wait_for(&claims, "models", "Bound", |c| c["status"]["phase"] == "Bound").await;

    let script = "cat /work/ready; echo name=$(POD_NAME) ip=$(POD_IP) mode=$mode token=$TOKEN; \
                  cat /etc/app/app.yaml; echo; echo weights > /models/w.txt; pwd";
    let writer = json!({
        "metadata": {"name": "writer"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "settings"}},
                {"name": "repo", "persistentVolumeClaim": {"claimName": "models"}},
            ],
            "initContainers": [{
                "name": "prepare", "image": "shell", "args": ["-c", "echo prepared > /work/ready"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/work"}],
            }],
            "containers": [{
                "name": "main", "image": "shell", "command": ["sh", "-c"], "args": [script],
                "workingDir": "/srv/app",
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}}},
                ],
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": ""}],
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/work"},
                    {"name": "config", "mountPath": "/etc/app"},
                    {"name": "repo", "mountPath": "/models"},
                ],
            }],
        },
    });
    create(&pods, writer).await;
    let done = wait_for(&pods, "writer", "Succeeded", phase_is("Succeeded")).await;
    assert_eq!(done["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
    let ip = done["status"]["podIP"].as_str().unwrap();
    assert!(cluster.pod_range().contains(ip.parse().unwrap()), "{ip}");
    let output = logs(&pods, "writer", false).await;
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[..3], ["prepared", &format!("name=writer ip={ip} mode=fast token=s3cret"), "replicas: 2"]);
    assert!(lines[3].ends_with("/root/srv/app"), "the working directory: {}", lines[3]);
    let init = LogParams { container: Some("prepare".into()), ..LogParams::default() };
    assert_eq!(pods.logs("writer", &init).await.unwrap(), "");

    // The same claim is the same directory for the next pod.
    let mut reader = shell_pod("reader", "Never", "cat /data/w.txt");
    reader["spec"]["volumes"] = json!([{"name": "repo", "persistentVolumeClaim": {"claimName": "models"}}]);
    reader["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "repo", "mountPath": "/data"}]);
    create(&pods, reader).await;
    wait_for(&pods, "reader", "Succeeded", phase_is("Succeeded")).await;
    assert_eq!(logs(&pods, "reader", false).await, "weights\n");
    assert!(state.path().join("claims/default/models/w.txt").is_file());

    // A volume whose claim does not exist holds the pod back, and says why.
    let mut orphan = shell_pod("orphan", "Never", "true");
    orphan["spec"]["volumes"] = json!([{"name": "repo", "persistentVolumeClaim": {"claimName": "nope"}}]);
    create(&pods, orphan).await;
    let waiting = wait_for(&pods, "orphan", "a message", |p| p["status"]["message"].is_string()).await;
    assert_eq!(waiting["status"]["message"], "persistentvolumeclaim \"nope\" not found");
    assert_eq!(waiting["status"]["phase"], "Pending");
    cluster.stop().await.unwrap();
}

/// A pod serving HTTP with `python3 -m http.server` on its own IP.
fn web_pod(name: &str, probes: Value) -> Value {
    let mut container = json!({
        "name": "web", "image": "shell",
        "command": ["python3", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
    });
    for (probe, spec) in probes.as_object().unwrap() {
        container[probe] = spec.clone();
    }
    json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}})
}

async fn http_get(address: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn probes_gate_readiness_and_services_reach_ready_pods() {
    let (cluster, client, _state) = start().await;
    let (pods, services, endpoints): (Api<Pod>, Api<Service>, Api<Endpoints>) = (
        Api::namespaced(client.clone(), "default"),
        Api::namespaced(client.clone(), "default"),
        Api::namespaced(client.clone(), "default"),
    );
    let service = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 9000, "targetPort": "http"}]}});
    let service = serde_json::to_value(create(&services, service).await).unwrap();
    let cluster_ip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert!(cluster.service_range().contains(cluster_ip.parse().unwrap()), "{cluster_ip}");

    let probes = json!({
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "initialDelaySeconds": 2},
    });
    create(&pods, web_pod("web-1", probes)).await;
    let never_ready = json!({"readinessProbe": {"exec": {"command": ["sh", "-c", "exit 1"]}, "periodSeconds": 1, "failureThreshold": 1}});
    create(&pods, web_pod("web-2", never_ready)).await;

    let web1 = wait_for(&pods, "web-1", "Ready", ready).await;
    let ip1 = web1["status"]["podIP"].as_str().unwrap().to_owned();
    let web2 = wait_for(&pods, "web-2", "running", |p| container(p)["state"]["running"].is_object()).await;
    let ip2 = web2["status"]["podIP"].as_str().unwrap().to_owned();
    let listed = wait_for(&endpoints, "web", "both pods listed", |e| {
        e["subsets"][0]["addresses"].as_array().is_some_and(|a| a.len() == 1)
            && e["subsets"][0]["notReadyAddresses"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(listed["subsets"][0]["addresses"][0]["ip"], ip1.as_str());
    assert_eq!(listed["subsets"][0]["notReadyAddresses"][0]["ip"], ip2.as_str());
    assert_eq!(listed["subsets"][0]["ports"][0], json!({"name": "http", "port": 8080, "protocol": "TCP"}));
    assert!(!ready(&web2));

    // Through the cluster IP, every connection lands on the ready pod.
    for _ in 0..3 {
        let response = http_get(&format!("{cluster_ip}:9000")).await;
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    }
    let direct = http_get(&format!("{ip1}:8080")).await;
    assert!(direct.starts_with("HTTP/1.0 200"));

    // A pod made after the Service sees its variables.
    let mut client_pod = shell_pod("client", "Never", "echo $WEB_SERVICE_HOST:$WEB_SERVICE_PORT_HTTP");
    client_pod["metadata"]["labels"] = json!({"role": "client"});
    create(&pods, client_pod).await;
    wait_for(&pods, "client", "Succeeded", phase_is("Succeeded")).await;
    assert_eq!(logs(&pods, "client", false).await, format!("{cluster_ip}:9000\n"));

    // A liveness probe that keeps failing restarts the container.
    let mut sick = shell_pod("sick", "Always", "sleep 1000");
    sick["spec"]["containers"][0]["livenessProbe"] =
        json!({"exec": {"command": ["sh", "-c", "exit 1"]}, "periodSeconds": 1, "failureThreshold": 2});
    create(&pods, sick).await;
    let restarted = wait_for(&pods, "sick", "a restart", |p| container(p)["restartCount"].as_u64() >= Some(1)).await;
    assert_eq!(container(&restarted)["lastState"]["terminated"]["exitCode"], 143, "stopped by SIGTERM");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let messages: Vec<String> =
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.message).collect();
    assert!(messages.iter().any(|m| m == "Container main failed liveness probe, will be restarted"), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("Readiness probe failed: command")), "{messages:?}");

    // Deleting the Service takes its Endpoints and its listener with it.
    services.delete("web", &DeleteParams::default()).await.unwrap();
    for _ in 0..100 {
        if endpoints.get_opt("web").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(endpoints.get_opt("web").await.unwrap().is_none(), "the Endpoints go with their Service");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(format!("{cluster_ip}:9000")).await.is_err(), "nothing listens any more");
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn deletion_stops_containers_gracefully_then_removes_the_pod() {
    let (cluster, client, _state) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let polite = "trap 'echo stopping; exit 0' TERM; echo started; while true; do sleep 0.05; done";
    create(&pods, shell_pod("polite", "Always", polite)).await;
    let stubborn = "trap 'echo ignoring' TERM; echo started; while true; do sleep 0.05; done";
    let mut stubborn = shell_pod("stubborn", "Always", stubborn);
    stubborn["spec"]["terminationGracePeriodSeconds"] = json!(2);
    create(&pods, stubborn).await;
    for name in ["polite", "stubborn"] {
        wait_for(&pods, name, "started", |p| container(p)["state"]["running"].is_object()).await;
    }
    while !logs(&pods, "stubborn", false).await.contains("started") {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut watch =
        pods.watch(&kube::api::WatchParams::default().fields("metadata.name=stubborn"), "0").await.unwrap().boxed();
    let started = std::time::Instant::now();
    pods.delete("polite", &DeleteParams::default()).await.unwrap();
    pods.delete("stubborn", &DeleteParams::default()).await.unwrap();
    let terminating = pods.get("stubborn").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some(), "the pod stays while its containers stop");
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(2));
    // The polite one exits on SIGTERM; the stubborn one is killed after its 2 s.
    let mut deleted = false;
    while let Some(event) = watch.next().await {
        if let kube::api::WatchEvent::Deleted(_) = event.unwrap() {
            deleted = true;
            break;
        }
    }
    assert!(deleted);
    assert!(started.elapsed() >= Duration::from_secs(2), "the grace period is waited out");
    assert!(pods.get("polite").await.is_err() && pods.get("stubborn").await.is_err());
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_probes_ask_the_standard_health_service() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("lantern", tonic_health::ServingStatus::NotServing).await;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    let launch = lantern_devcluster::kubelet::process::Launch {
        program: String::new(),
        args: Vec::new(),
        env: Vec::new(),
        dir: std::env::temp_dir(),
        container: None,
        memory_cgroup: None,
    };
    let target = probe::Target { ip: "127.0.0.1".parse().unwrap(), ports: vec![("grpc".into(), port)], launch };
    assert_eq!(probe::check(&json!({"grpc": {"port": port}}), &target).await, Ok(()));
    let failing = probe::check(&json!({"grpc": {"port": port, "service": "lantern"}}), &target).await;
    assert!(failing.unwrap_err().contains("NotServing"));
    let closed = probe::check(&json!({"grpc": {"port": 1}}), &target).await;
    assert!(closed.unwrap_err().contains("failed to connect"));
}
