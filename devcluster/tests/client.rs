//! The devcluster through kube-rs, as the operator will use it: CRUD, selectors, optimistic
//! concurrency, patches, the status subresource, finalizers, and watches that resume.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, Config};
use lantern_devcluster::{DevCluster, Options};
use serde_json::json;

async fn start() -> (DevCluster, Client, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let options = Options::new(state.path());
    let cluster = DevCluster::start(options).await.unwrap();
    let config = Config::new(cluster.url().parse().unwrap());
    let client = Client::try_from(config).unwrap();
    (cluster, client, state)
}

fn config_map(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap()
}

fn error_code(error: kube::Error) -> (u16, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.reason),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn objects_are_created_listed_updated_and_deleted_as_on_a_real_cluster() {
    let (cluster, client, _state) = start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created =
        maps.create(&PostParams::default(), &config_map("a", &[("app", "web")], &[("k", "1")])).await.unwrap();
    let metadata = &created.metadata;
    assert!(metadata.uid.is_some() && metadata.creation_timestamp.is_some() && metadata.resource_version.is_some());
    maps.create(&PostParams::default(), &config_map("b", &[("app", "db")], &[])).await.unwrap();
    let duplicate = maps.create(&PostParams::default(), &config_map("a", &[], &[])).await.unwrap_err();
    assert_eq!(error_code(duplicate), (409, "AlreadyExists".to_owned()));

    let web = maps.list(&ListParams::default().labels("app=web")).await.unwrap();
    assert_eq!(web.items.iter().map(|m| m.metadata.name.clone().unwrap()).collect::<Vec<_>>(), vec!["a"]);
    let by_name = maps.list(&ListParams::default().fields("metadata.name=b")).await.unwrap();
    assert_eq!(by_name.items.len(), 1);
    let everywhere: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(everywhere.list(&ListParams::default()).await.unwrap().items.len(), 2);

    // Optimistic concurrency: a replace from a stale read is refused.
    let mut stale = created.clone();
    let mut fresh = maps.get("a").await.unwrap();
    fresh.data.as_mut().unwrap().insert("k".into(), "2".into());
    maps.replace("a", &PostParams::default(), &fresh).await.unwrap();
    stale.data.as_mut().unwrap().insert("k".into(), "3".into());
    assert_eq!(error_code(maps.replace("a", &PostParams::default(), &stale).await.unwrap_err()).0, 409);

    let patched =
        maps.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"extra": "x"}}))).await.unwrap();
    assert_eq!(patched.data.unwrap().get("extra").map(String::as_str), Some("x"));
    let json_patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/data/extra"}])).unwrap();
    let patched = maps.patch("a", &PatchParams::default(), &Patch::<()>::Json(json_patch)).await.unwrap();
    assert!(!patched.data.unwrap().contains_key("extra"));

    maps.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(error_code(maps.get("a").await.unwrap_err()), (404, "NotFound".to_owned()));
    let nowhere: Api<ConfigMap> = Api::namespaced(client.clone(), "missing");
    assert_eq!(
        error_code(nowhere.create(&PostParams::default(), &config_map("x", &[], &[])).await.unwrap_err()).0,
        404
    );
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn status_is_a_separate_subresource_and_finalizers_hold_deletion() {
    let (cluster, client, _state) = start().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "s", "finalizers": ["lantern.dev/test"]},
        "spec": {"ports": [{"port": 8000}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}},
    }))
    .unwrap();
    let created = services.create(&PostParams::default(), &service).await.unwrap();
    let ingress = |s: Service| s.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).map(|i| i[0].ip.clone());
    assert_eq!(ingress(created), None, "a create does not set the status");
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.5"}]}}});
    services.patch_status("s", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let spec_patch =
        json!({"metadata": {"labels": {"a": "b"}}, "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.6"}]}}});
    let after = services.patch("s", &PatchParams::default(), &Patch::Merge(&spec_patch)).await.unwrap();
    assert_eq!(ingress(after), Some(Some("127.0.0.5".to_owned())), "the main resource cannot write status");

    services.delete("s", &DeleteParams::default()).await.unwrap();
    let held = services.get("s").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "the finalizer holds it");
    services
        .patch("s", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert_eq!(error_code(services.get("s").await.unwrap_err()).0, 404, "gone once the last finalizer is");

    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_owned()) && names.contains(&"kube-system".to_owned()), "{names:?}");
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn a_watch_resumes_from_a_resource_version_and_follows_selectors() {
    let (cluster, client, _state) = start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = maps.create(&PostParams::default(), &config_map("one", &[("app", "web")], &[])).await.unwrap();
    let resume_from = first.metadata.resource_version.unwrap();
    // Made while nobody watches: a resumed watch replays them.
    maps.create(&PostParams::default(), &config_map("two", &[("app", "web")], &[])).await.unwrap();
    maps.create(&PostParams::default(), &config_map("other", &[("app", "db")], &[])).await.unwrap();

    let params = WatchParams::default().labels("app=web").timeout(10);
    let mut events = maps.watch(&params, &resume_from).await.unwrap().boxed();
    let mut next = async || match events.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(m) => ("ADDED", m.metadata.name.unwrap()),
        WatchEvent::Modified(m) => ("MODIFIED", m.metadata.name.unwrap()),
        WatchEvent::Deleted(m) => ("DELETED", m.metadata.name.unwrap()),
        other => panic!("unexpected event {other:?}"),
    };
    assert_eq!(next().await, ("ADDED", "two".to_owned()), "replayed");
    maps.patch("one", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": "1"}}))).await.unwrap();
    assert_eq!(next().await, ("MODIFIED", "one".to_owned()));
    // Leaving the selector reads as a deletion; entering it as an addition.
    maps.patch("two", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})))
        .await
        .unwrap();
    assert_eq!(next().await, ("DELETED", "two".to_owned()));
    maps.patch("other", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})))
        .await
        .unwrap();
    assert_eq!(next().await, ("ADDED", "other".to_owned()));
    maps.delete("one", &DeleteParams::default()).await.unwrap();
    assert_eq!(next().await, ("DELETED", "one".to_owned()));

    // kube-runtime's watcher (list, then watch) sees the same world.
    let stream = kube::runtime::watcher(maps.clone(), kube::runtime::watcher::Config::default());
    let mut objects = Box::pin(kube::runtime::WatchStreamExt::applied_objects(stream));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(objects.try_next().await.unwrap().unwrap().metadata.name.unwrap());
    }
    seen.sort();
    assert_eq!(seen, vec!["other", "two"]);
    maps.create(&PostParams::default(), &config_map("three", &[], &[])).await.unwrap();
    assert_eq!(objects.try_next().await.unwrap().unwrap().metadata.name.unwrap(), "three");
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn an_applied_crd_is_established_and_serves_its_resource_until_deleted() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};

    let (cluster, client, _state) = start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
            }],
        },
    }))
    .unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conditions = created.status.unwrap().conditions.unwrap();
    assert!(conditions.iter().any(|c| c.type_ == "Established" && c.status == "True"), "{conditions:?}");

    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.has_group("example.dev"), "discovery lists the new group");
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.dev", "v1", "Widget"), "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let mut widget = DynamicObject::new("w", &resource);
    widget.data = json!({"spec": {"size": 3}, "status": {"ready": true}});
    let stored = widgets.create(&PostParams::default(), &widget).await.unwrap();
    assert!(stored.data.get("status").is_none(), "status is a subresource: a create drops it");
    widgets
        .patch_status("w", &PatchParams::default(), &Patch::Merge(json!({"status": {"ready": true}})))
        .await
        .unwrap();
    let resized =
        widgets.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"size": 4}}))).await.unwrap();
    assert_eq!((resized.metadata.generation, resized.data["status"]["ready"].as_bool()), (Some(2), Some(true)));

    // The scale subresource, as an autoscaler reads and writes it.
    let scale = widgets.get_scale("w").await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(4));
    let scaled = json!({"spec": {"replicas": 6}});
    widgets.patch_scale("w", &PatchParams::default(), &Patch::Merge(&scaled)).await.unwrap();
    assert_eq!(widgets.get("w").await.unwrap().data["spec"]["size"], 6);

    let invalid: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "gadgets.example.dev"},
        "spec": {"group": "example.dev", "names": {"plural": "gadgets", "kind": "Gadget"}, "scope": "Everywhere", "versions": []},
    }))
    .unwrap();
    let (code, reason) = error_code(crds.create(&PostParams::default(), &invalid).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    crds.delete("widgets.example.dev", &DeleteParams::default()).await.unwrap();
    assert_eq!(error_code(widgets.get("w").await.unwrap_err()).0, 404, "the resource went with its CRD");
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn server_side_apply_tracks_which_applier_owns_which_field() {
    let (cluster, client, _state) = start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let apply = |mode: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"mode": mode}});
    maps.patch("c", &PatchParams::apply("operator"), &Patch::Apply(apply("fast"))).await.unwrap();
    let conflict = maps.patch("c", &PatchParams::apply("someone"), &Patch::Apply(apply("slow"))).await.unwrap_err();
    assert_eq!(error_code(conflict), (409, "Conflict".to_owned()));
    // The same value is no conflict; forcing takes the field over.
    maps.patch("c", &PatchParams::apply("someone"), &Patch::Apply(apply("fast"))).await.unwrap();
    let forced = maps.patch("c", &PatchParams::apply("someone").force(), &Patch::Apply(apply("slow"))).await.unwrap();
    assert_eq!(forced.data.unwrap()["mode"], "slow");
    let back = maps.patch("c", &PatchParams::apply("operator"), &Patch::Apply(apply("fast"))).await.unwrap_err();
    assert_eq!(error_code(back).0, 409, "the operator no longer owns the field");
    cluster.stop().await.unwrap();
}

/// Polls `check` for up to 5 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn owners_take_their_dependents_with_them_as_the_propagation_policy_says() {
    let (cluster, client, _state) = start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let family = async |name: &str| {
        let parent = maps.create(&PostParams::default(), &config_map(name, &[], &[])).await.unwrap();
        let mut child = config_map(&format!("{name}-child"), &[], &[]);
        child.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ConfigMap", "name": name,
                "uid": parent.metadata.uid.unwrap(), "blockOwnerDeletion": true,
            }))
            .unwrap(),
        ]);
        maps.create(&PostParams::default(), &child).await.unwrap();
    };
    let gone = async |name: &str| maps.get_opt(name).await.unwrap().is_none();

    family("background").await;
    maps.delete("background", &DeleteParams::background()).await.unwrap();
    eventually("the child follows its owner", async || gone("background-child").await).await;

    family("orphan").await;
    maps.delete("orphan", &DeleteParams::orphan()).await.unwrap();
    eventually("the orphaning owner goes", async || gone("orphan").await).await;
    let orphan = maps.get("orphan-child").await.unwrap();
    assert!(orphan.metadata.owner_references.unwrap_or_default().is_empty(), "the child stays, unowned");

    family("foreground").await;
    maps.delete("foreground", &DeleteParams::foreground()).await.unwrap();
    eventually("the owner goes after its child", async || gone("foreground").await && gone("foreground-child").await)
        .await;

    // A deleted namespace is emptied, then removed.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap())
        .await
        .unwrap();
    let team: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    team.create(&PostParams::default(), &config_map("inside", &[], &[])).await.unwrap();
    namespaces.delete("team", &DeleteParams::default()).await.unwrap();
    eventually("the namespace and its content go", async || {
        namespaces.get_opt("team").await.unwrap().is_none() && team.get_opt("inside").await.unwrap().is_none()
    })
    .await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_without_a_resource_version_all_land() {
    let (cluster, client, _state) = start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("shared", &[], &[])).await.unwrap();
    // Writers patch the same object at once; the apiserver re-applies a patch that lost a race
    // to the newer object instead of refusing it, and so does the devcluster.
    let writers = (0..4).map(|writer| {
        let maps = maps.clone();
        tokio::spawn(async move {
            for key in 0..25 {
                let patch = json!({"data": {format!("w{writer}-{key}"): "x"}});
                maps.patch("shared", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }
    let shared = maps.get("shared").await.unwrap();
    assert_eq!(shared.data.unwrap_or_default().len(), 100);
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn a_paged_list_is_one_consistent_snapshot_and_a_watch_can_ask_for_table_rows() {
    let (cluster, client, _state) = start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b", "c"] {
        maps.create(&PostParams::default(), &config_map(name, &[("set", "x")], &[])).await.unwrap();
    }
    let first = maps.list(&ListParams::default().labels("set=x").limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(1));
    let token = first.metadata.continue_.clone().unwrap();
    // Written after the first page: not in the second, which comes from the same reading.
    maps.create(&PostParams::default(), &config_map("d", &[("set", "x")], &[])).await.unwrap();
    let second = maps.list(&ListParams::default().labels("set=x").limit(2).continue_token(&token)).await.unwrap();
    let names: Vec<String> = second.items.iter().filter_map(|m| m.metadata.name.clone()).collect();
    assert_eq!(names, ["c"]);
    assert_eq!(second.metadata.continue_, None);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    let gone = maps.list(&ListParams::default().labels("set=x").limit(2).continue_token(&token)).await.unwrap_err();
    assert_eq!(error_code(gone), (410, "Expired".into()), "a used-up token is expired");

    // A watch asked for tables sends each object as a one-row table with its columns.
    let url = format!("{}/api/v1/namespaces/default/configmaps?watch=true&labelSelector=set%3Dx", cluster.url());
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let mut response = reqwest::Client::new().get(url).header("accept", table).send().await.unwrap();
    let chunk = response.chunk().await.unwrap().unwrap();
    let first_line = std::str::from_utf8(&chunk).unwrap().lines().next().unwrap().to_owned();
    let event: serde_json::Value = serde_json::from_str(&first_line).unwrap();
    assert_eq!((event["type"].as_str(), event["object"]["kind"].as_str()), (Some("ADDED"), Some("Table")), "{event}");
    assert_eq!(event["object"]["rows"].as_array().unwrap().len(), 1);
    assert!(!event["object"]["columnDefinitions"].as_array().unwrap().is_empty());
    cluster.stop().await.unwrap();
}
