//! Which worker pods to create and delete (pure): `replicas` pods of the wanted revision, and
//! during a runtime change the old revision's pods kept until enough new ones are ready
//! (surge first: the new pods all start at once, an old one goes for each new one ready).

use k8s_openapi::api::core::v1::Pod;

use super::objects::{INDEX_LABEL, REVISION_LABEL};

/// What the plan needs of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServingPod {
    pub name: String,
    pub revision: String,
    pub index: u32,
    /// The pod's Ready condition: its worker serves a version of the model.
    pub ready: bool,
    /// Its container ended for good (phase Failed or Succeeded).
    pub ended: bool,
    pub terminating: bool,
    pub ip: Option<String>,
}

impl ServingPod {
    /// Reads a pod the operator made; `None` for one without the operator's labels.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let labels = pod.metadata.labels.as_ref()?;
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        Some(Self {
            name: pod.metadata.name.clone()?,
            revision: labels.get(REVISION_LABEL)?.clone(),
            index: labels.get(INDEX_LABEL)?.parse().ok()?,
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            ended: matches!(phase, Some("Failed" | "Succeeded")),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            ip: status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()),
        })
    }
}

/// Pods to create (slots of the wanted revision) and to delete (by name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPlan {
    pub create: Vec<u32>,
    pub delete: Vec<String>,
}

/// Brings the pods to `replicas` of `revision`.
pub fn plan(replicas: u32, revision: &str, pods: &[ServingPod]) -> PodPlan {
    let mut plan = PodPlan::default();
    let live = |p: &&ServingPod| !p.terminating;
    let current: Vec<&ServingPod> = pods.iter().filter(live).filter(|p| p.revision == revision).collect();
    for index in 0..replicas {
        // A terminating pod still holds its name; its slot is refilled once it is gone.
        if !pods.iter().any(|p| p.revision == revision && p.index == index) {
            plan.create.push(index);
        }
    }
    for pod in &current {
        if pod.index >= replicas || pod.ended {
            plan.delete.push(pod.name.clone());
        }
    }
    let ready_current = current.iter().filter(|p| p.ready && !p.ended && p.index < replicas).count() as u32;
    let mut old: Vec<&ServingPod> = pods.iter().filter(live).filter(|p| p.revision != revision).collect();
    // Keep the ready old pods first.
    old.sort_by_key(|p| (!p.ready, p.name.clone()));
    let keep = replicas.saturating_sub(ready_current) as usize;
    plan.delete.extend(old.iter().enumerate().filter(|(i, p)| *i >= keep || p.ended).map(|(_, p)| p.name.clone()));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(revision: &str, index: u32, ready: bool) -> ServingPod {
        ServingPod {
            name: format!("adder-{revision}-{index}"),
            revision: revision.into(),
            index,
            ready,
            ended: false,
            terminating: false,
            ip: Some("127.1.0.2".into()),
        }
    }

    #[test]
    fn creates_the_missing_slots_and_removes_the_extra_ones() {
        assert_eq!(plan(2, "new", &[]), PodPlan { create: vec![0, 1], delete: vec![] });
        let scaled_down = plan(1, "new", &[pod("new", 0, true), pod("new", 1, true)]);
        assert_eq!(scaled_down, PodPlan { create: vec![], delete: vec!["adder-new-1".into()] });
        assert_eq!(plan(0, "new", &[pod("new", 0, true)]).delete, ["adder-new-0"]);
    }

    #[test]
    fn a_runtime_change_surges_new_pods_and_retires_an_old_one_per_new_one_ready() {
        let old = [pod("old", 0, true), pod("old", 1, true)];
        let start = plan(2, "new", &old);
        assert_eq!((start.create, start.delete.len()), (vec![0, 1], 0), "old pods serve until new ones are ready");
        let one_ready = [old[0].clone(), old[1].clone(), pod("new", 0, true), pod("new", 1, false)];
        assert_eq!(plan(2, "new", &one_ready).delete.len(), 1);
        let all_ready = [old[0].clone(), old[1].clone(), pod("new", 0, true), pod("new", 1, true)];
        assert_eq!(plan(2, "new", &all_ready).delete, ["adder-old-0", "adder-old-1"]);
        // Not-ready old pods go first.
        let mixed = [pod("old", 0, false), pod("old", 1, true), pod("new", 0, true), pod("new", 1, false)];
        assert_eq!(plan(2, "new", &mixed).delete, ["adder-old-0"]);
    }

    #[test]
    fn ended_pods_are_replaced_and_terminating_ones_hold_their_slot() {
        let mut ended = pod("new", 0, false);
        ended.ended = true;
        assert_eq!(plan(1, "new", &[ended]), PodPlan { create: vec![], delete: vec!["adder-new-0".into()] });
        let mut leaving = pod("new", 0, false);
        leaving.terminating = true;
        assert_eq!(plan(1, "new", &[leaving]), PodPlan::default());
    }
}
