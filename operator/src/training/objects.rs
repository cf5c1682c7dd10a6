//! The objects a TrainingJob owns, as pure functions of the job: the ConfigMap with its job file,
//! the coordinator Service in front of rank 0, and one pod per rank and attempt.
//!
//! Ranks find rank 0 through the coordinator Service's environment variables
//! (`$(ADDER_COORDINATOR_SERVICE_HOST)`), which every cluster sets for a Service that exists
//! before the pod; no cluster DNS is needed. Each rank listens on its own pod IP.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, Pod, PodSpec, Secret, Service, ServiceSpec, Volume,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec};

use lantern_contract::env;
use lantern_contract::job::{DATA_MOUNT, JobConfig};

use crate::context::Error;
use crate::crd::{RepositoryCache, TrainingJob};
use crate::credentials::{self, TOKEN_KEY};
use crate::objects::{self, env_var, match_labels, owned_metadata, tcp_port};

/// The collective (rendezvous and all-reduce) port every rank listens on.
pub const COLLECTIVE_PORT: u16 = 7070;
/// Rank 0's progress port, which the operator polls.
pub const PROGRESS_PORT: u16 = 7071;
/// Where the job file is mounted.
const CONFIG_DIR: &str = "/etc/lantern";
/// Where every rank finds the job's token.
const TOKEN_DIR: &str = "/var/run/lantern/job";

pub const JOB_LABEL: &str = "lantern.dev/training-job";
pub const RANK_LABEL: &str = "lantern.dev/rank";
pub const ATTEMPT_LABEL: &str = "lantern.dev/attempt";

fn name(job: &TrainingJob) -> &str {
    job.metadata.name.as_deref().unwrap_or_default()
}

fn job_labels(job: &TrainingJob) -> BTreeMap<String, String> {
    objects::worker_labels(JOB_LABEL, name(job))
}

pub fn config_map_name(job: &TrainingJob) -> String {
    format!("{}-job", name(job))
}

pub fn coordinator_name(job: &TrainingJob) -> String {
    format!("{}-coordinator", name(job))
}

/// The pod of `rank` in gang attempt `attempt` (0 for the first run, one more per restart).
pub fn pod_name(job: &TrainingJob, attempt: u32, rank: u32) -> String {
    format!("{}-{attempt}-rank-{rank}", name(job))
}

/// The Secret with the job's token, which its ranks' collective endpoints and rank 0's progress
/// service require of every caller.
pub fn token_secret_name(job: &TrainingJob) -> String {
    format!("{}-token", name(job))
}

/// The job's token Secret, with a fresh token (kept only if no such Secret exists yet).
pub fn token_secret(job: &TrainingJob) -> Secret {
    credentials::token_secret(job, token_secret_name(job), job_labels(job))
}

/// Who may reach the job's pods: its own ranks on the collective port, the operator on rank 0's
/// progress port, nobody else.
pub fn network_policy(job: &TrainingJob, operator_namespace: &str) -> NetworkPolicy {
    let ranks = NetworkPolicyPeer { pod_selector: Some(match_labels([(JOB_LABEL, name(job))])), ..Default::default() };
    NetworkPolicy {
        metadata: owned_metadata(job, name(job).to_owned(), job_labels(job)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels([(JOB_LABEL, name(job))])),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { from: Some(vec![ranks]), ports: Some(vec![tcp_port(COLLECTIVE_PORT)]) },
                NetworkPolicyIngressRule {
                    from: Some(vec![objects::operator_peer(operator_namespace)]),
                    ports: Some(vec![tcp_port(PROGRESS_PORT)]),
                },
            ]),
            egress: None,
        }),
    }
}

/// The ConfigMap holding `job.json`, with `held` as the versions retention keeps; fails for a
/// spec the CRD's rules should have refused.
pub fn config_map(job: &TrainingJob, held: &BTreeSet<u64>) -> Result<ConfigMap, Error> {
    let mut config = JobConfig::try_from(job)?;
    config.output.held_versions = held.clone();
    let file =
        serde_json::to_string_pretty(&config).map_err(|e| Error::Invalid(format!("writing the job file: {e}")))?;
    Ok(ConfigMap {
        metadata: owned_metadata(job, config_map_name(job), job_labels(job)),
        data: Some(BTreeMap::from([("job.json".to_owned(), file)])),
        ..ConfigMap::default()
    })
}

/// The Service in front of rank 0's collective and progress ports.
pub fn coordinator_service(job: &TrainingJob) -> Service {
    let selector =
        BTreeMap::from([(JOB_LABEL.to_owned(), name(job).to_owned()), (RANK_LABEL.to_owned(), "0".to_owned())]);
    Service {
        metadata: owned_metadata(job, coordinator_name(job), job_labels(job)),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![
                objects::service_port("collective", COLLECTIVE_PORT),
                objects::service_port("progress", PROGRESS_PORT),
            ]),
            // Ranks may connect before rank 0 reports ready.
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The environment variable prefix a Service's variables get: `adder-coordinator` →
/// `ADDER_COORDINATOR`.
fn service_env_prefix(service: &str) -> String {
    service.to_uppercase().replace(['-', '.'], "_")
}

/// Where a rank writes its termination message.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// One rank's pod for gang attempt `attempt`, running `image` (the job's own image when set).
pub fn rank_pod(job: &TrainingJob, attempt: u32, rank: u32, image: &str, cache_defaults: &RepositoryCache) -> Pod {
    let spec = &job.spec;
    let mut labels = job_labels(job);
    labels.insert(RANK_LABEL.to_owned(), rank.to_string());
    labels.insert(ATTEMPT_LABEL.to_owned(), attempt.to_string());
    let coordinator = service_env_prefix(&coordinator_name(job));
    let mut env = vec![
        objects::pod_ip_var(),
        env_var(env::RANK, rank.to_string()),
        env_var(env::WORLD_SIZE, spec.replicas.to_string()),
        env_var(env::ADDRESS, format!("$(POD_IP):{COLLECTIVE_PORT}")),
        env_var(env::COORDINATOR, format!("$({coordinator}_SERVICE_HOST):{COLLECTIVE_PORT}")),
        env_var(env::TERMINATION_LOG, TERMINATION_LOG),
        env_var(env::JOB_TOKEN_FILE, format!("{TOKEN_DIR}/{TOKEN_KEY}")),
    ];
    if rank == 0 {
        env.push(env_var(env::PROGRESS_ADDRESS, format!("$(POD_IP):{PROGRESS_PORT}")));
    }
    let repository = objects::repository_access(&spec.output.repository.with_cache_defaults(cache_defaults));
    env.extend(repository.env);
    let (token_volume, token_mount) =
        objects::secret_file_volume("job-token", &token_secret_name(job), TOKEN_KEY, TOKEN_KEY, TOKEN_DIR);
    let job_file = ConfigMapVolumeSource { name: config_map_name(job), ..ConfigMapVolumeSource::default() };
    let mut volumes = vec![
        repository.volume,
        Volume { name: "job".to_owned(), config_map: Some(job_file), ..Volume::default() },
        token_volume,
    ];
    let mut volume_mounts = vec![repository.mount, objects::read_only_mount("job", CONFIG_DIR), token_mount];
    if let Some(data) = spec.data.jsonl.as_ref().and_then(|jsonl| jsonl.config_map.clone()) {
        let source = ConfigMapVolumeSource { name: data, ..ConfigMapVolumeSource::default() };
        volumes.push(Volume { name: "data".to_owned(), config_map: Some(source), ..Volume::default() });
        volume_mounts.push(objects::read_only_mount("data", DATA_MOUNT));
        env.push(env_var(env::DATA_DIR, DATA_MOUNT));
    }
    let mut container = Container {
        name: "worker".to_owned(),
        image: Some(spec.image.as_deref().unwrap_or(image).to_owned()),
        args: Some(vec!["train".to_owned(), "--config".to_owned(), format!("{CONFIG_DIR}/job.json")]),
        env: Some(env),
        env_from: Some(repository.env_from).filter(|e| !e.is_empty()),
        ports: Some(vec![
            objects::container_port("collective", COLLECTIVE_PORT),
            objects::container_port("progress", PROGRESS_PORT),
        ]),
        volume_mounts: Some(volume_mounts),
        // Rank 0 leaves its final progress there (the last checkpoint, which no poll may have
        // seen); a rank that fails without writing one leaves the end of its log.
        termination_message_path: Some(TERMINATION_LOG.to_owned()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        security_context: Some(objects::worker_security_context()),
        ..Container::default()
    };
    objects::place_on_device(&mut container, spec.resources.as_ref(), spec.device.unwrap_or_default());
    let mut pod_spec = PodSpec {
        restart_policy: Some("Never".to_owned()),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    objects::harden_pod(&mut pod_spec);
    objects::apply_overrides(&mut pod_spec, spec.template.as_ref());
    Pod { metadata: owned_metadata(job, pod_name(job, attempt, rank), labels), spec: Some(pod_spec), status: None }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job() -> TrainingJob {
        crate::training::test_job(json!({
            "output": {"model": "adder", "repository": {"claimName": "models", "subPath": "team-a"}},
            "template": {"nodeSelector": {"pool": "cpu"}, "serviceAccountName": "trainer"},
            "resources": {"limits": {"cpu": "2"}},
        }))
    }

    #[test]
    fn each_rank_knows_its_place_and_finds_rank_zero_through_the_service() {
        let pod =
            serde_json::to_value(rank_pod(&job(), 1, 0, "ghcr.io/lantern-dev/worker:0.1", &RepositoryCache::default()))
                .unwrap();
        assert_eq!(pod["metadata"]["name"], "adder-1-rank-0");
        assert_eq!(pod["metadata"]["labels"][RANK_LABEL], "0");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        let container = &pod["spec"]["containers"][0];
        let env: BTreeMap<String, String> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
            .collect();
        assert_eq!(env[env::WORLD_SIZE], "2");
        assert_eq!(env[env::COORDINATOR], "$(ADDER_COORDINATOR_SERVICE_HOST):7070");
        assert_eq!(env[env::PROGRESS_ADDRESS], "$(POD_IP):7071");
        assert_eq!(container["volumeMounts"][0]["subPath"], "team-a");
        assert_eq!(container["resources"]["limits"]["cpu"], "2");
        assert_eq!(pod["spec"]["nodeSelector"]["pool"], "cpu");
        assert_eq!(pod["spec"]["serviceAccountName"], "trainer");
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(env[env::JOB_TOKEN_FILE], "/var/run/lantern/job/token");
        assert_eq!(pod["spec"]["volumes"][2]["secret"]["secretName"], "adder-token");
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert_eq!(pod["spec"]["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");

        let other = serde_json::to_value(rank_pod(&job(), 1, 1, "img", &RepositoryCache::default())).unwrap();
        let names: Vec<&str> = other["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert!(!names.contains(&"LANTERN_PROGRESS_ADDRESS"), "only rank 0 serves progress");
    }

    #[test]
    fn a_data_config_map_is_mounted_read_only_in_every_rank() {
        let tune = crate::training::test_job(json!({
            "model": {"fineTune": {"base": {"model": "smollm2", "version": 1}, "method": {"full": {}}, "sequenceLength": 64}},
            "data": {"jsonl": {"configMap": "tickets-data", "path": "train.jsonl"}},
        }));
        for rank in [0, 1] {
            let pod = serde_json::to_value(rank_pod(&tune, 0, rank, "img", &RepositoryCache::default())).unwrap();
            assert_eq!(pod["spec"]["volumes"][3], json!({"name": "data", "configMap": {"name": "tickets-data"}}));
            let mount = &pod["spec"]["containers"][0]["volumeMounts"][3];
            assert_eq!(*mount, json!({"name": "data", "mountPath": DATA_MOUNT, "readOnly": true}));
            let env = pod["spec"]["containers"][0]["env"].as_array().unwrap();
            assert!(env.contains(&json!({"name": env::DATA_DIR, "value": DATA_MOUNT})), "{env:?}");
        }
        let plain = serde_json::to_value(rank_pod(&job(), 0, 0, "img", &RepositoryCache::default())).unwrap();
        assert_eq!(
            plain["spec"]["volumes"].as_array().unwrap().len(),
            4,
            "the repository, job, token and scratch volumes only"
        );
    }

    #[test]
    fn the_network_policy_admits_only_the_jobs_ranks_to_the_collective_and_the_operator_to_progress() {
        let policy = serde_json::to_value(network_policy(&job(), "lantern-system")).unwrap();
        let ingress = policy["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 2);
        assert_eq!(ingress[0]["ports"][0]["port"], COLLECTIVE_PORT);
        assert_eq!(ingress[0]["from"][0]["podSelector"]["matchLabels"][JOB_LABEL], "adder");
        assert_eq!(ingress[1]["ports"][0]["port"], PROGRESS_PORT);
        assert_eq!(ingress[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "lantern-operator");
        assert_eq!(serde_json::to_value(token_secret(&job())).unwrap()["metadata"]["name"], "adder-token");
    }

    #[test]
    fn the_service_selects_rank_zero_and_the_config_map_holds_the_job_file() {
        let service = serde_json::to_value(coordinator_service(&job())).unwrap();
        assert_eq!(service["metadata"]["name"], "adder-coordinator");
        assert_eq!(service["spec"]["selector"], json!({JOB_LABEL: "adder", RANK_LABEL: "0"}));
        let map = config_map(&job(), &BTreeSet::new()).unwrap();
        let file: serde_json::Value = serde_json::from_str(&map.data.unwrap()["job.json"]).unwrap();
        assert_eq!(file["output"]["model"], "adder");
    }
}
