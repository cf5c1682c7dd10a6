//! The real `kubectl` against the devcluster: discovery, `apply -f` (client-side and
//! server-side, with conflicts between appliers), `get` as a table and as YAML, `delete`, CRDs
//! with `wait`, `scale`, schema and CEL errors, pods with `logs`, `wait` and `delete`, and the
//! errors it prints.

use lantern_devcluster::{DevCluster, Options};

/// Runs kubectl against the cluster; (success, stdout, stderr).
async fn kubectl(cluster: &DevCluster, args: &[&str]) -> (bool, String, String) {
    let run = cluster.kubectl(args, None).await.expect("kubectl runs");
    (run.ok, run.stdout, run.stderr)
}

async fn start() -> (DevCluster, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let options = Options::new(state.path());
    (DevCluster::start(options).await.unwrap(), state)
}

const CONFIG_MAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: demo}
data:
  mode: fast
";

#[tokio::test(flavor = "multi_thread")]
async fn apply_get_and_delete_work_as_on_a_real_cluster() {
    let (cluster, state) = start().await;
    let manifest = state.path().join("settings.yaml");
    std::fs::write(&manifest, CONFIG_MAP).unwrap();
    let file = manifest.to_str().unwrap();

    let (ok, out, err) = kubectl(&cluster, &["apply", "-f", file]).await;
    assert!(ok && out.contains("configmap/settings created"), "{out}{err}");
    std::fs::write(&manifest, CONFIG_MAP.replace("mode: fast", "mode: slow\n  extra: \"1\"")).unwrap();
    let (ok, out, err) = kubectl(&cluster, &["apply", "-f", file]).await;
    assert!(ok && out.contains("configmap/settings configured"), "{out}{err}");

    let (ok, out, _) = kubectl(&cluster, &["get", "configmaps"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert!(ok && header == ["NAME", "DATA", "AGE"], "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("settings   2 "), "{out}");
    let (ok, out, _) = kubectl(&cluster, &["get", "configmap", "settings", "-o", "yaml"]).await;
    assert!(
        ok && out.contains("mode: slow") && out.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{out}"
    );
    let (_, out, _) = kubectl(&cluster, &["get", "configmaps", "-l", "app=other", "-o", "name"]).await;
    assert!(out.trim().is_empty(), "the selector matches nothing: {out}");

    // Server-side apply records the manager's fields.
    let (ok, out, err) =
        kubectl(&cluster, &["apply", "--server-side", "--field-manager", "lantern-test", "-f", file]).await;
    assert!(ok && out.contains("serverside-applied"), "{out}{err}");
    let (_, out, _) = kubectl(&cluster, &["get", "cm", "settings", "-o", "yaml", "--show-managed-fields"]).await;
    assert!(out.contains("manager: lantern-test") && out.contains("f:mode: {}"), "{out}");
    // Another applier changing a field lantern-test owns conflicts, until it forces.
    std::fs::write(&manifest, CONFIG_MAP.replace("mode: fast", "mode: turbo\n  extra: \"1\"")).unwrap();
    let other = ["apply", "--server-side", "--field-manager", "someone-else", "-f", file];
    let (ok, _, err) = kubectl(&cluster, &other).await;
    assert!(!ok && err.contains("conflict with \"lantern-test\": .data.mode"), "{err}");
    let (ok, out, err) = kubectl(&cluster, &[&other[..], &["--force-conflicts"]].concat()).await;
    assert!(ok && out.contains("serverside-applied"), "{out}{err}");
    let (_, out, _) = kubectl(&cluster, &["get", "cm", "settings", "-o", "jsonpath={.data.mode}"]).await;
    assert_eq!(out, "turbo");

    let (ok, out, _) = kubectl(&cluster, &["delete", "-f", file]).await;
    assert!(ok && out.contains("configmap \"settings\" deleted"), "{out}");
    let (ok, _, err) = kubectl(&cluster, &["get", "configmap", "settings"]).await;
    assert!(!ok && err.contains("configmaps \"settings\" not found"), "{err}");
    let (ok, _, err) = kubectl(&cluster, &["get", "frobs"]).await;
    assert!(!ok && err.contains("the server doesn't have a resource type \"frobs\""), "{err}");
    cluster.stop().await.unwrap();
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.dev
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - {rule: \"self.colour != 'red' || self.size <= 3\", message: red widgets have at most 3 parts}
            properties:
              size: {type: integer, minimum: 1, description: How many parts the widget has.}
              colour: {type: string, default: grey}
              material:
                type: string
                x-kubernetes-validations: [{rule: self == oldSelf, message: material is immutable}]
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.size, statusReplicasPath: .status.size}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
";

const WIDGET: &str = "apiVersion: example.dev/v1
kind: Widget
metadata:
  name: small
spec:
  size: 2
";

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_applied_with_kubectl_serves_its_kind_with_printer_columns() {
    let (cluster, state) = start().await;
    let (crd, widget) = (state.path().join("crd.yaml"), state.path().join("widget.yaml"));
    std::fs::write(&crd, CRD).unwrap();
    std::fs::write(&widget, WIDGET).unwrap();
    let (ok, out, err) = kubectl(&cluster, &["apply", "-f", crd.to_str().unwrap()]).await;
    assert!(ok && out.contains("widgets.example.dev created"), "{out}{err}");
    let established = ["wait", "--for", "condition=Established", "crd/widgets.example.dev", "--timeout", "10s"];
    let (ok, out, err) = kubectl(&cluster, &established).await;
    assert!(ok && out.contains("condition met"), "{out}{err}");
    let (ok, out, err) = kubectl(&cluster, &["apply", "-f", widget.to_str().unwrap()]).await;
    assert!(ok && out.contains("widget.example.dev/small created"), "{out}{err}");
    let (ok, out, _) = kubectl(&cluster, &["get", "wd"]).await;
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert!(ok && rows[0] == ["NAME", "SIZE", "AGE"] && rows[1][..2] == ["small", "2"], "{out}");
    let (_, out, _) = kubectl(&cluster, &["get", "widget", "small", "-o", "jsonpath={.spec.colour}"]).await;
    assert_eq!(out, "grey", "the schema's default is filled in");

    let (ok, out, err) = kubectl(&cluster, &["explain", "widgets.spec.size"]).await;
    assert!(ok && out.contains("How many parts the widget has."), "explain reads the schema: {out}{err}");

    // The scale subresource writes the declared path.
    let (ok, out, err) = kubectl(&cluster, &["scale", "widget/small", "--replicas", "5"]).await;
    assert!(ok && out.contains("widget.example.dev/small scaled"), "{out}{err}");
    let (_, out, _) = kubectl(&cluster, &["get", "widget", "small", "-o", "jsonpath={.spec.size}"]).await;
    assert_eq!(out, "5");

    // The schema is enforced: kubectl asks for strict field validation.
    for (spec, error) in [
        ("size: 2\n  shape: round", "strict decoding error: unknown field \"spec.shape\""),
        (
            "size: 0",
            "The Widget \"small\" is invalid: spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1",
        ),
        ("colour: red", "spec.size: Required value"),
    ] {
        std::fs::write(&widget, WIDGET.replace("size: 2", spec)).unwrap();
        let (ok, _, err) = kubectl(&cluster, &["apply", "-f", widget.to_str().unwrap()]).await;
        assert!(!ok && err.contains(error), "{spec}: {err}");
    }

    // CEL rules: across fields, and a transition rule that holds only once there is an old value.
    for (spec, error) in [
        ("size: 4\n  colour: red", Some("spec: Invalid value: \"object\": red widgets have at most 3 parts")),
        ("size: 2\n  material: wood", None),
        ("size: 2\n  material: steel", Some("spec.material: Invalid value: \"string\": material is immutable")),
    ] {
        std::fs::write(&widget, WIDGET.replace("size: 2", spec)).unwrap();
        let (ok, out, err) = kubectl(&cluster, &["apply", "-f", widget.to_str().unwrap()]).await;
        match error {
            Some(error) => assert!(!ok && err.contains(error), "{spec}: {err}"),
            None => assert!(ok, "{spec}: {out}{err}"),
        }
    }
    cluster.stop().await.unwrap();
}

const PODS: &str = "apiVersion: v1
kind: Pod
metadata:
  name: greeter
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: shell
    args: [-c, 'echo hello from $(POD_NAME); touch /tmp/ready-$(POD_NAME); trap \"exit 0\" TERM; while true; do sleep 0.05; done']
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    readinessProbe:
      exec: {command: [sh, -c, 'test -f /tmp/ready-greeter']}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  containers:
  - name: main
    image: shell
    args: [-c, 'echo attempt; exit 2']
";

#[tokio::test(flavor = "multi_thread")]
async fn pods_run_and_kubectl_waits_for_them_reads_their_logs_and_deletes_them() {
    let state = tempfile::tempdir().unwrap();
    let mut options = Options::new(state.path()).image("shell", "/bin/sh");
    options.kubelet.back_off = std::time::Duration::from_millis(200);
    let cluster = DevCluster::start(options).await.unwrap();
    let manifest = state.path().join("pods.yaml");
    std::fs::write(&manifest, PODS).unwrap();

    let (ok, out, err) = kubectl(&cluster, &["apply", "-f", manifest.to_str().unwrap()]).await;
    assert!(ok && out.contains("pod/greeter created") && out.contains("pod/crasher created"), "{out}{err}");
    let (ok, out, err) = kubectl(&cluster, &["wait", "--for=condition=Ready", "pod/greeter", "--timeout=30s"]).await;
    assert!(ok && out.contains("pod/greeter condition met"), "{out}{err}");
    let (ok, out, err) = kubectl(&cluster, &["logs", "greeter"]).await;
    assert!(ok && out == "hello from greeter\n", "{out}{err}");
    // Following ends when the container does; here it is cut by a timeout while it runs.
    let (_, out, err) = kubectl(&cluster, &["logs", "-f", "greeter", "--request-timeout=3s"]).await;
    assert!(out.starts_with("hello from greeter"), "{out}{err}");

    // The crasher backs off; `get` says so, and --previous reads the run before.
    let mut status = String::new();
    for _ in 0..200 {
        let (_, out, _) = kubectl(&cluster, &["get", "pod", "crasher", "--no-headers"]).await;
        status = out;
        if status.contains("CrashLoopBackOff") && status.split_whitespace().nth(3).is_none_or(|r| r != "0") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let columns: Vec<&str> = status.split_whitespace().collect();
    assert_eq!(columns[..3], ["crasher", "0/1", "CrashLoopBackOff"], "{status}");
    let (ok, out, err) = kubectl(&cluster, &["logs", "crasher", "--previous"]).await;
    assert!(ok && out == "attempt\n", "{out}{err}");
    let (ok, out, _) = kubectl(&cluster, &["get", "pods", "-o", "wide"]).await;
    let pod_ips = format!("127.{}.0.", cluster.pod_range().0);
    assert!(ok && out.contains(&pod_ips) && out.contains("devcluster"), "{out}");
    let (ok, out, _) = kubectl(&cluster, &["get", "events", "--field-selector", "involvedObject.name=crasher"]).await;
    assert!(ok && out.contains("BackOff"), "{out}");

    // `delete` returns once the pod is gone, after its container has stopped.
    let (ok, out, err) = kubectl(&cluster, &["delete", "pod", "greeter", "crasher"]).await;
    assert!(ok && out.contains("pod \"greeter\" deleted"), "{out}{err}");
    let (_, out, _) = kubectl(&cluster, &["get", "pods", "-o", "name"]).await;
    assert!(out.trim().is_empty(), "{out}");
    let (ok, _, err) = kubectl(&cluster, &["logs", "greeter"]).await;
    assert!(!ok && err.contains("pods \"greeter\" not found"), "{err}");
    cluster.stop().await.unwrap();
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: shell
          args: [-c, 'echo release $RELEASE; exec sleep 600']
          env: [{name: RELEASE, value: one}]
";

#[tokio::test(flavor = "multi_thread")]
async fn deployments_roll_out_with_kubectl_and_imperative_creates_work() {
    let state = tempfile::tempdir().unwrap();
    let options = Options::new(state.path()).image("shell", "/bin/sh");
    let cluster = DevCluster::start(options).await.unwrap();
    let manifest = state.path().join("web.yaml");
    std::fs::write(&manifest, DEPLOYMENT).unwrap();
    let file = manifest.to_str().unwrap();

    let (ok, out, err) = kubectl(&cluster, &["apply", "-f", file]).await;
    assert!(ok && out.contains("deployment.apps/web created"), "{out}{err}");
    let (ok, out, err) = kubectl(&cluster, &["rollout", "status", "deployment/web", "--timeout=30s"]).await;
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");
    let (_, table, _) = kubectl(&cluster, &["get", "deployment", "web", "--no-headers"]).await;
    let columns: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(columns[..4], ["web", "2/2", "2", "2"], "{table}");
    let pods = |out: &str| out.lines().map(str::to_owned).collect::<Vec<_>>();
    let (_, first, _) = kubectl(&cluster, &["get", "pods", "-l", "app=web", "-o", "name"]).await;
    assert_eq!(pods(&first).len(), 2, "{first}");

    // A changed template replaces every pod, new ones first.
    std::fs::write(&manifest, DEPLOYMENT.replace("value: one", "value: two")).unwrap();
    let (ok, out, err) = kubectl(&cluster, &["apply", "-f", file]).await;
    assert!(ok && out.contains("deployment.apps/web configured"), "{out}{err}");
    let (ok, out, err) = kubectl(&cluster, &["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");
    let mut second = String::new();
    for _ in 0..100 {
        second = kubectl(&cluster, &["get", "pods", "-l", "app=web", "-o", "name"]).await.1;
        if pods(&second).len() == 2 && pods(&second).iter().all(|p| !pods(&first).contains(p)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(pods(&second).iter().all(|p| !pods(&first).contains(p)), "old pods remain: {first} / {second}");
    let new_pod = pods(&second)[0].clone();
    let (_, log, _) = kubectl(&cluster, &["logs", &new_pod]).await;
    assert_eq!(log, "release two\n");

    // kubectl's generators send protobuf for ConfigMaps and Secrets; those are understood.
    let (ok, out, err) = kubectl(&cluster, &["create", "configmap", "flags", "--from-literal=mode=fast"]).await;
    assert!(ok && out.contains("configmap/flags created"), "{out}{err}");
    let (ok, out, err) =
        kubectl(&cluster, &["create", "secret", "generic", "token", "--from-literal=key=s3cret"]).await;
    assert!(ok && out.contains("secret/token created"), "{out}{err}");
    let (_, out, _) = kubectl(&cluster, &["get", "secret", "token", "-o", "jsonpath={.data.key}"]).await;
    assert_eq!(out, "czNjcmV0");

    // kubectl's generator sends the Deployment in protobuf; it runs like an applied one.
    let create = ["create", "deployment", "sleeper", "--image=shell", "--replicas=1", "--", "sleep", "300"];
    let (ok, out, err) = kubectl(&cluster, &create).await;
    assert!(ok && out.contains("deployment.apps/sleeper created"), "{out}{err}");
    let (ok, out, err) = kubectl(&cluster, &["rollout", "status", "deployment/sleeper", "--timeout=30s"]).await;
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");
    let (_, command, _) = kubectl(
        &cluster,
        &["get", "deployment", "sleeper", "-o", "jsonpath={.spec.template.spec.containers[0].command}"],
    )
    .await;
    assert_eq!(command, r#"["sleep","300"]"#);

    // The scale subresource, answers to `auth`, trailing-slash discovery and paged lists.
    let (ok, out, err) = kubectl(&cluster, &["scale", "deployment", "web", "--replicas=3"]).await;
    assert!(ok && out.contains("deployment.apps/web scaled"), "{out}{err}");
    let (_, scale, _) =
        kubectl(&cluster, &["get", "--raw", "/apis/apps/v1/namespaces/default/deployments/web/scale"]).await;
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!((scale["kind"].as_str(), scale["spec"]["replicas"].as_i64()), (Some("Scale"), Some(3)), "{scale}");
    assert_eq!(scale["status"]["selector"], "app=web");
    let (ok, out, err) = kubectl(&cluster, &["auth", "can-i", "delete", "deployments"]).await;
    assert!(ok && out.trim() == "yes", "{out}{err}");
    let (ok, out, err) = kubectl(&cluster, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]).await;
    assert!(ok && out == "lantern-devcluster", "{out}{err}");
    for path in ["/api/", "/apis/", "/version/", "/api/v1/"] {
        let (ok, out, err) = kubectl(&cluster, &["get", "--raw", path]).await;
        assert!(ok && out.starts_with('{'), "{path}: {out}{err}");
    }
    for _ in 0..100 {
        if kubectl(&cluster, &["get", "pods", "-l", "app=web", "-o", "name"]).await.1.lines().count() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (ok, out, err) = kubectl(&cluster, &["get", "pods", "-l", "app=web", "-o", "name", "--chunk-size=1"]).await;
    assert!(ok && out.lines().count() == 3, "pages of one pod each, all three: {out}{err}");
    let (ok, _, err) = kubectl(&cluster, &["delete", "deployment", "web"]).await;
    assert!(ok, "{err}");
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn the_official_python_client_discovers_scales_pages_and_asks_for_access() {
    let site = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/python/site");
    if !site.join("kubernetes").is_dir() {
        eprintln!(
            "SKIPPED: the kubernetes client is not installed; run scripts/setup-test-deps.sh (the test command does)"
        );
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(Options::new(state.path()).image("busybox", "/bin/sh")).await.unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kubernetes_check.py");
    let kubeconfig = cluster.kubeconfig().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").arg(script).arg(kubeconfig).env("PYTHONPATH", site).output().unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the kubernetes client failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["versions"], serde_json::json!(["v1"]));
    assert!(report["groups"].as_array().unwrap().contains(&"apps".into()), "{report}");
    assert!(report["version"].as_str().unwrap().starts_with("v1."), "{report}");
    assert_eq!(report["created_status"], true, "a created Deployment carries status");
    assert_eq!(report["scale"], serde_json::json!([3, "app=py"]));
    assert_eq!(report["pages"], serde_json::json!([["page-a", "page-b"], ["page-c"]]));
    assert_eq!(report["allowed"], true);
    cluster.stop().await.unwrap();
}
