//! The HTTP API: discovery, then every resource path (`/api/v1/...`, `/apis/{group}/{version}/...`)
//! routed to get, list, watch, create, update, patch and delete over the store.

mod defaults;
mod discovery;
pub mod gc;
mod logs;
mod openapi;
mod ownership;
pub mod pages;
mod patch;
mod protobuf;
mod protobuf_deployment;
mod reviews;
mod scale;
mod table;
mod watch;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderMap, Method, StatusCode, Uri};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::objects::{self, with_type};
use crate::resources::{Registry, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError, ApiResult};
use crate::store::{Expect, ObjectKey, StoreError, resource_version};

pub fn router(cluster: Arc<Cluster>) -> Router {
    Router::new()
        // With and without the trailing slash the official Python client's discovery adds.
        .route("/version", get(|| async { Json(discovery::version()) }))
        .route("/version/", get(|| async { Json(discovery::version()) }))
        .route("/api", get(|| async { Json(discovery::core_versions()) }))
        .route("/api/", get(|| async { Json(discovery::core_versions()) }))
        .route("/apis", get(|State(c): State<Arc<Cluster>>| async move { Json(discovery::groups(&c.registry)) }))
        .route("/apis/", get(|State(c): State<Arc<Cluster>>| async move { Json(discovery::groups(&c.registry)) }))
        .route("/openapi/v3", get(|State(c): State<Arc<Cluster>>| async move { Json(openapi::root(&c.registry)) }))
        .route("/openapi/v3/{*path}", get(openapi_document))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .fallback(resource_request)
        .with_state(cluster)
}

async fn openapi_document(State(cluster): State<Arc<Cluster>>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches("/openapi/v3/");
    match openapi::document(&cluster.registry, path) {
        Some(document) => Json(document).into_response(),
        None => ApiError::no_route(uri.path()).into_response(),
    }
}

/// A request for a resource or an object: which type, namespace, name and subresource.
#[derive(Debug)]
struct Target {
    rtype: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn key(&self) -> ObjectKey {
        ObjectKey {
            resource: self.rtype.key(),
            namespace: self.namespace.clone().unwrap_or_default(),
            name: self.name.clone().unwrap_or_default(),
        }
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.rtype.group, &self.rtype.plural, self.name.as_deref().unwrap_or_default())
    }
}

/// The query parameters the API reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    label_selector: Option<String>,
    field_selector: Option<String>,
    resource_version: Option<String>,
    watch: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    send_initial_events: Option<bool>,
    timeout_seconds: Option<u64>,
    dry_run: Option<String>,
    field_manager: Option<String>,
    propagation_policy: Option<String>,
    include_object: Option<String>,
    field_validation: Option<String>,
    force: Option<bool>,
    grace_period_seconds: Option<u64>,
    container: Option<String>,
    previous: Option<bool>,
    follow: Option<bool>,
    tail_lines: Option<i64>,
    limit_bytes: Option<u64>,
    /// A list's page size, and the token of the page to read (`continue`).
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

/// Either discovery under a group-version or a resource path.
async fn resource_request(
    State(cluster): State<Arc<Cluster>>,
    method: Method,
    uri: Uri,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&cluster, &method, &uri, &params, &headers, body).await {
        Ok(response) => {
            tracing::debug!(%method, %uri, status = %response.status(), "request");
            response
        }
        Err(error) => {
            tracing::debug!(%method, %uri, status = %error.code, message = %error.message, "request refused");
            error.into_response()
        }
    }
}

async fn handle(
    cluster: &Arc<Cluster>,
    method: &Method,
    uri: &Uri,
    params: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group] => {
            return discovery::group(&cluster.registry, group)
                .map(|g| Json(g).into_response())
                .ok_or_else(|| ApiError::no_route(uri.path()));
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route(uri.path())),
    };
    if let Some(kind) = reviews::kind(group, version, rest) {
        let question = (!protobuf::is_protobuf(&body)).then(|| parse_body(headers, &body));
        return reviews::answer(group, kind, method, question);
    }
    if rest.is_empty() {
        return discovery::resources(&cluster.registry, group, version)
            .map(|r| Json(r).into_response())
            .ok_or_else(|| ApiError::no_route(uri.path()));
    }
    let target = resolve(&cluster.registry, group, version, rest).ok_or_else(|| ApiError::no_route(uri.path()))?;
    if target.subresource.as_deref() == Some("scale") && target.name.is_some() {
        return scale::serve(cluster, &target, method, headers, &body, params);
    }
    let watching = params.watch.as_deref().is_some_and(|w| w == "true" || w == "1");
    match (method.clone(), &target.name, watching) {
        (Method::GET, None, true) => {
            watch::serve(cluster.clone(), &target.rtype, target.namespace.clone(), params, as_table(headers))
        }
        (Method::GET, None, false) => {
            let listed = list(cluster, &target, params)?;
            match as_table(headers) {
                true => {
                    let items = listed["items"].as_array().cloned().unwrap_or_default();
                    let revision = listed["metadata"]["resourceVersion"].as_str().unwrap_or_default();
                    Ok(Json(table::render(
                        &target.rtype,
                        &items,
                        revision,
                        params.include_object.as_deref(),
                        jiff::Timestamp::now(),
                    ))
                    .into_response())
                }
                false => Ok(Json(listed).into_response()),
            }
        }
        (Method::GET, Some(_), _) if target.subresource.as_deref() == Some("log") && target.rtype.log => {
            logs::serve(cluster, &target, params)
        }
        (Method::GET, Some(_), _) => {
            let object = get_object(cluster, &target)?;
            match as_table(headers) && target.subresource.is_none() {
                true => {
                    let revision = object["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
                    let rendered = table::render(
                        &target.rtype,
                        &[object],
                        &revision,
                        params.include_object.as_deref(),
                        jiff::Timestamp::now(),
                    );
                    Ok(Json(rendered).into_response())
                }
                false => Ok(Json(object).into_response()),
            }
        }
        (Method::POST, None, _) => create(cluster, &target, parse_body(headers, &body)?, params)
            .map(|o| (StatusCode::CREATED, Json(o)).into_response()),
        (Method::PUT, Some(_), _) => {
            update(cluster, &target, parse_body(headers, &body)?, params).map(|o| Json(o).into_response())
        }
        (Method::PATCH, Some(_), _) => {
            patch::apply(cluster, &target, headers, &body, params).map(|o| Json(o).into_response())
        }
        (Method::DELETE, Some(_), _) => delete(cluster, &target, &body, params),
        (Method::DELETE, None, _) => delete_collection(cluster, &target, params).map(|l| Json(l).into_response()),
        (method, _, _) => Err(ApiError::method_not_allowed(format!("{method} is not supported on {}", uri.path()))),
    }
}

/// Maps the path after the group-version to a target. `namespaces/{ns}/{plural}/...` is a
/// namespaced resource; `namespaces/{name}[/{sub}]` is the namespace object itself.
fn resolve(registry: &Registry, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let owned = |s: &&str| Some((*s).to_owned());
    if let ["namespaces", namespace, plural, tail @ ..] = rest
        && let Some(rtype) = registry.find(group, version, plural).filter(|t| t.namespaced)
    {
        return match tail {
            [] => Some(Target { rtype, namespace: owned(namespace), name: None, subresource: None }),
            [name] => Some(Target { rtype, namespace: owned(namespace), name: owned(name), subresource: None }),
            [name, sub] => {
                Some(Target { rtype, namespace: owned(namespace), name: owned(name), subresource: owned(sub) })
            }
            _ => None,
        };
    }
    let (plural, tail) = rest.split_first()?;
    let rtype = registry.find(group, version, plural)?;
    match (tail, rtype.namespaced) {
        ([], _) => Some(Target { rtype, namespace: None, name: None, subresource: None }),
        ([name], false) => Some(Target { rtype, namespace: None, name: owned(name), subresource: None }),
        ([name, sub], false) => Some(Target { rtype, namespace: None, name: owned(name), subresource: owned(sub) }),
        _ => None,
    }
}

/// Whether the client asks for server-side printing.
fn as_table(headers: &HeaderMap) -> bool {
    headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(table::wanted)
}

/// A JSON, YAML or (for ConfigMaps and Secrets) protobuf request body.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let content_type =
        headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/json" | "" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_saphyr::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}"))),
        protobuf::MEDIA_TYPE => protobuf::decode(body),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn dry_run(params: &Params) -> bool {
    params.dry_run.as_deref() == Some("All")
}

fn get_object(cluster: &Cluster, target: &Target) -> ApiResult<Value> {
    let object = cluster.store.get(&target.key()).ok_or_else(|| target.not_found())?;
    match target.subresource.as_deref() {
        None | Some("status") => Ok(with_type(&target.rtype, object)),
        Some(other) => Err(ApiError::no_route(&format!("{}/{other}", target.rtype.plural))),
    }
}

fn selectors(params: &Params) -> ApiResult<(LabelSelector, FieldSelector)> {
    let labels =
        LabelSelector::parse(params.label_selector.as_deref().unwrap_or_default()).map_err(ApiError::bad_request)?;
    let fields =
        FieldSelector::parse(params.field_selector.as_deref().unwrap_or_default()).map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list(cluster: &Cluster, target: &Target, params: &Params) -> ApiResult<Value> {
    let (labels, fields) = selectors(params)?;
    // What a continue token may be used for: the same resource, namespace and selectors.
    let query = format!(
        "{:?} {:?} {:?} {:?}",
        target.rtype.key(),
        target.namespace,
        params.label_selector,
        params.field_selector
    );
    let now = std::time::Instant::now();
    let limit = params.limit.filter(|&limit| limit > 0);
    let page = match &params.continue_token {
        Some(token) => cluster.pages.next(&query, token, limit, now)?,
        None => {
            let (objects, revision) = cluster.store.list(&target.rtype.key(), target.namespace.as_deref());
            let items: Vec<Value> = objects
                .into_iter()
                .map(|(_, object)| with_type(&target.rtype, object))
                .filter(|o| labels.matches(o) && fields.matches(o))
                .collect();
            match limit {
                Some(limit) => cluster.pages.first(&query, items, revision, limit, now),
                None => pages::Page { items, revision, next: None },
            }
        }
    };
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some((token, remaining)) = page.next {
        metadata["continue"] = token.into();
        metadata["remainingItemCount"] = remaining.into();
    }
    Ok(json!({
        "kind": format!("{}List", target.rtype.kind),
        "apiVersion": target.rtype.api_version(),
        "metadata": metadata,
        "items": page.items,
    }))
}

/// Maps a store refusal to the API's error for `target`.
fn store_error(target: &Target, name: &str, error: StoreError) -> ApiError {
    let rtype = &target.rtype;
    match error {
        StoreError::NotFound => ApiError::not_found(&rtype.group, &rtype.plural, name),
        StoreError::AlreadyExists => ApiError::already_exists(&rtype.group, &rtype.plural, name),
        StoreError::Conflict { .. } => ApiError::conflict(
            &rtype.group,
            &rtype.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
    }
}

/// The namespace of a namespaced write must exist and not be terminating.
fn check_namespace(cluster: &Cluster, target: &Target) -> ApiResult<()> {
    let Some(namespace) = target.namespace.as_deref() else { return Ok(()) };
    let key = ObjectKey {
        resource: crate::store::ResourceKey::new("", "namespaces"),
        namespace: String::new(),
        name: namespace.to_owned(),
    };
    match cluster.store.get(&key) {
        None => Err(ApiError::not_found("", "namespaces", namespace)),
        Some(ns) if ns["status"]["phase"] == "Terminating" => Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        ))),
        Some(_) => Ok(()),
    }
}

fn create(cluster: &Cluster, target: &Target, body: Value, params: &Params) -> ApiResult<Value> {
    if target.subresource.is_some() {
        return Err(ApiError::method_not_allowed("create is not supported on a subresource"));
    }
    let object = objects::prepare_create(&target.rtype, target.namespace.as_deref(), body, &objects::now())?;
    insert(cluster, target, with_type(&target.rtype, object), params)
}

/// Stores a new object made by [`objects::prepare_create`]: its namespace must be live, a CRD is
/// admitted and then served, and a dry run stops short of the store.
fn insert(cluster: &Cluster, target: &Target, mut object: Value, params: &Params) -> ApiResult<Value> {
    check_namespace(cluster, target)?;
    if target.rtype.plural == "namespaces" {
        object["status"] = json!({"phase": "Active"});
    }
    // A Service's cluster IP is chosen and stored under one lock.
    let _choosing = (target.rtype.builtin && target.rtype.plural == "services")
        .then(|| cluster.service_ips.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    builtin_defaults(cluster, target, &mut object, None)?;
    conform(target, &mut object, None, params)?;
    let served = admit_crd(target, &mut object)?;
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let key = ObjectKey { name: name.clone(), ..target.key() };
    if dry_run(params) {
        return match cluster.store.get(&key) {
            Some(_) => Err(store_error(target, &name, StoreError::AlreadyExists)),
            None => Ok(object),
        };
    }
    let written = cluster.store.write(&key, object, Expect::Absent).map_err(|e| store_error(target, &name, e))?;
    serve_crd(cluster, &written, served);
    Ok(written)
}

/// The apiserver's defaults for built-in kinds (see [`defaults`]).
fn builtin_defaults(cluster: &Cluster, target: &Target, object: &mut Value, stored: Option<&Value>) -> ApiResult<()> {
    if !target.rtype.builtin {
        return Ok(());
    }
    match target.rtype.plural.as_str() {
        "secrets" => defaults::secret(object),
        "services" => {
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let used = cluster
                .store
                .list(&target.rtype.key(), None)
                .0
                .into_iter()
                .filter_map(|(_, s)| s["spec"]["clusterIP"].as_str().map(str::to_owned))
                .collect();
            defaults::service(object, stored, cluster.service_range, &used)
                .map_err(|causes| ApiError::invalid("", "Service", &name, causes))?;
        }
        _ => {}
    }
    Ok(())
}

/// Applies a custom resource's schema: unknown fields pruned (refused with
/// `fieldValidation=Strict`, 400), defaults filled, violations (CEL rules too, with `stored` as
/// `oldSelf` on an update) refused (422, a cause per field).
fn conform(target: &Target, object: &mut Value, stored: Option<&Value>, params: &Params) -> ApiResult<()> {
    let Some(schema) = &target.rtype.schema else { return Ok(()) };
    let findings = crate::schema::apply(schema, object, stored);
    // As the apiserver decodes before it validates, strictness speaks first.
    if params.field_validation.as_deref() == Some("Strict") && !findings.unknown.is_empty() {
        let fields: Vec<String> = findings.unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
            target.rtype.version,
            fields.join(", "),
            kind = target.rtype.kind,
        )));
    }
    if !findings.causes.is_empty() {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        return Err(ApiError::invalid(&target.rtype.group, &target.rtype.kind, name, findings.causes));
    }
    Ok(())
}

fn is_crd(rtype: &ResourceType) -> bool {
    rtype.group == "apiextensions.k8s.io" && rtype.plural == "customresourcedefinitions"
}

/// A CRD about to be stored: checked (422 naming each bad field), and given the status of an
/// accepted one. Returns what it will serve; nothing for other kinds.
fn admit_crd(target: &Target, object: &mut Value) -> ApiResult<Option<Vec<ResourceType>>> {
    if !is_crd(&target.rtype) {
        return Ok(None);
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let types = crate::crd::resource_types(object)
        .map_err(|causes| ApiError::invalid(&target.rtype.group, &target.rtype.kind, &name, causes))?;
    object["status"] = crate::crd::accepted_status(object, &objects::now());
    Ok(Some(types))
}

/// The resource a CRD defines, as the store keys its objects.
fn crd_resource(crd: &Value) -> crate::store::ResourceKey {
    let spec = &crd["spec"];
    crate::store::ResourceKey::new(
        spec["group"].as_str().unwrap_or_default(),
        spec["names"]["plural"].as_str().unwrap_or_default(),
    )
}

/// Starts serving what a stored CRD defines.
fn serve_crd(cluster: &Cluster, crd: &Value, served: Option<Vec<ResourceType>>) {
    if let Some(types) = served {
        cluster.registry.replace(&crd_resource(crd), types);
    }
}

/// Stops serving a removed CRD's resource and deletes its objects, as the apiserver does.
fn retire_crd(cluster: &Cluster, target: &Target, crd: &Value) {
    if !is_crd(&target.rtype) {
        return;
    }
    let resource = crd_resource(crd);
    cluster.registry.replace(&resource, Vec::new());
    for (key, _) in cluster.store.list(&resource, None).0 {
        let _ = cluster.store.remove(&key, None);
    }
}

/// Replaces the object (or its status) with `body`, checking the body's resourceVersion when it
/// has one. Removing the last finalizer of an object being deleted deletes it.
fn update(cluster: &Cluster, target: &Target, body: Value, params: &Params) -> ApiResult<Value> {
    let status_only = match target.subresource.as_deref() {
        None => false,
        Some("status") if target.rtype.status => true,
        Some(other) => return Err(ApiError::no_route(&format!("{}/{other}", target.rtype.plural))),
    };
    let name = target.name.clone().unwrap_or_default();
    let stored = cluster.store.get(&target.key()).ok_or_else(|| target.not_found())?;
    let expected = match body["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() => {
            Some(rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?)
        }
        _ => None,
    };
    if let Some(rv) = expected
        && rv != resource_version(&stored)
    {
        return Err(store_error(target, &name, StoreError::Conflict { stored: resource_version(&stored) }));
    }
    let updated = with_type(&target.rtype, objects::prepare_update(&target.rtype, &stored, body, status_only)?);
    if dry_run(params) {
        return Ok(updated);
    }
    store_update(cluster, target, updated, Some(resource_version(&stored)), params)
}

/// Writes an updated object, or removes it when it is being deleted and no finalizer is left.
fn store_update(
    cluster: &Cluster,
    target: &Target,
    mut updated: Value,
    expect: Option<u64>,
    params: &Params,
) -> ApiResult<Value> {
    let name = target.name.clone().unwrap_or_default();
    if !updated["metadata"]["deletionTimestamp"].is_null() && objects::finalizers(&updated).is_empty() {
        let removed = cluster.store.remove(&target.key(), expect).map_err(|e| store_error(target, &name, e))?;
        retire_crd(cluster, target, &removed);
        return Ok(removed);
    }
    let stored = cluster.store.get(&target.key());
    builtin_defaults(cluster, target, &mut updated, stored.as_ref())?;
    conform(target, &mut updated, stored.as_ref(), params)?;
    let served = admit_crd(target, &mut updated)?;
    let written = cluster
        .store
        .write(&target.key(), updated, Expect::existing(expect))
        .map_err(|e| store_error(target, &name, e))?;
    serve_crd(cluster, &written, served);
    Ok(written)
}

/// Deletes at once, or marks the object deleted while finalizers remain (the response is then
/// the object).
fn delete(cluster: &Cluster, target: &Target, body: &[u8], params: &Params) -> ApiResult<Response> {
    if target.subresource.is_some() {
        return Err(ApiError::method_not_allowed("delete is not supported on a subresource"));
    }
    let options: Value = match body.is_empty() {
        true => json!({}),
        false if protobuf::is_protobuf(body) => protobuf::decode(body)?,
        false => {
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        }
    };
    let name = target.name.clone().unwrap_or_default();
    let stored = cluster.store.get(&target.key()).ok_or_else(|| target.not_found())?;
    if let Some(uid) = options["preconditions"]["uid"].as_str()
        && stored["metadata"]["uid"] != uid
    {
        return Err(ApiError::conflict(
            &target.rtype.group,
            &target.rtype.plural,
            &name,
            "the UID in the precondition does not match",
        ));
    }
    let policy = options["propagationPolicy"].as_str().map(str::to_owned).or_else(|| params.propagation_policy.clone());
    let mut finalizers = objects::finalizers(&stored);
    match policy.as_deref() {
        Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
            finalizers.push("foregroundDeletion".into())
        }
        Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => finalizers.push("orphan".into()),
        _ => {}
    }
    if dry_run(params) {
        return Ok(Json(with_type(&target.rtype, stored)).into_response());
    }
    let namespace = target.rtype.group.is_empty() && target.rtype.plural == "namespaces";
    let grace = pod_grace(target, &stored, &options, params);
    if finalizers.is_empty() && !namespace && grace.is_none() {
        let removed = cluster.store.remove(&target.key(), None).map_err(|e| store_error(target, &name, e))?;
        retire_crd(cluster, target, &removed);
        let uid = removed["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        // Custom resources answer with the deleted object, built-ins with a Status.
        return Ok(match target.rtype.builtin {
            true => Json(status::success(&target.rtype.group, &target.rtype.plural, &name, &uid)).into_response(),
            false => Json(with_type(&target.rtype, removed)).into_response(),
        });
    }
    let mut marked = stored.clone();
    let grace = grace.unwrap_or(0);
    let shorter = marked["metadata"]["deletionGracePeriodSeconds"].as_u64().is_some_and(|g| grace < g);
    if marked["metadata"]["deletionTimestamp"].is_null() || shorter {
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace as i64);
        marked["metadata"]["deletionTimestamp"] = Value::String(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    }
    marked["metadata"]["finalizers"] = json!(finalizers);
    if namespace {
        // The namespace controller (in the garbage collector) empties it, then removes it.
        marked["status"]["phase"] = json!("Terminating");
    }
    let written = cluster
        .store
        .write(&target.key(), marked, Expect::Version(resource_version(&stored)))
        .map_err(|e| store_error(target, &name, e))?;
    Ok((StatusCode::OK, Json(with_type(&target.rtype, written))).into_response())
}

/// The grace period of a pod the kubelet runs: the delete's own, else the pod's
/// `terminationGracePeriodSeconds` (30 by default). `None` (removed at once) for anything else,
/// for a pod not on the node (not yet, or bound to a node that does not exist here), and for a
/// grace period of 0.
fn pod_grace(target: &Target, stored: &Value, options: &Value, params: &Params) -> Option<u64> {
    let pod = target.rtype.builtin && target.rtype.plural == "pods";
    if !pod || stored["spec"]["nodeName"] != crate::node::NODE_NAME {
        return None;
    }
    let grace = options["gracePeriodSeconds"]
        .as_u64()
        .or(params.grace_period_seconds)
        .or(stored["spec"]["terminationGracePeriodSeconds"].as_u64())
        .unwrap_or(30);
    (grace > 0).then_some(grace)
}

fn delete_collection(cluster: &Cluster, target: &Target, params: &Params) -> ApiResult<Value> {
    let listed = list(cluster, target, params)?;
    let mut deleted = Vec::new();
    for item in listed["items"].as_array().cloned().unwrap_or_default() {
        let name = item["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let namespace = item["metadata"]["namespace"].as_str().map(str::to_owned);
        let one = Target { rtype: target.rtype.clone(), namespace, name: Some(name), subresource: None };
        match delete(cluster, &one, &[], params) {
            Ok(_) => deleted.push(item),
            Err(error) if error.code == StatusCode::NOT_FOUND => {}
            Err(error) => return Err(error),
        }
    }
    Ok(json!({
        "kind": format!("{}List", target.rtype.kind),
        "apiVersion": target.rtype.api_version(),
        "metadata": {"resourceVersion": cluster.store.revision().to_string()},
        "items": deleted,
    }))
}
