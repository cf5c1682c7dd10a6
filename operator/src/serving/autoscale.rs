//! The built-in autoscaler, Knative's KPA in shape: `replicas` follows the load over a target
//! per pod. The load is what the service's pods carry, summed over them ([`Load`]): requests in
//! flight at the routers (plus the requests they hold for want of a pod), and for language
//! models the generation requests waiting in the engines and the KV cache their sequences hold.
//! Each targeted metric asks for `ceil(load / target)` pods and the most asked for wins, as a
//! HorizontalPodAutoscaler with several metrics decides; without any target, 8 requests in flight
//! per pod is the target.
//!
//! - **Stable mode**: the wanted pods are those the mean load over the stable window (60 s) asks
//!   for.
//! - **Panic mode**: when the mean over the short panic window (6 s) asks for at least the panic
//!   threshold (200%) of the pods there are, the service scales to that at once and does not
//!   scale down until the load has stayed below the threshold for a whole stable window.
//! - **Scale-down delay**: fewer pods only once every decision over the delay (30 s) asked for
//!   fewer, so a dip does not flap.
//! - **Zero**: with `minReplicas: 0`, a service with no load for `idleSecondsBeforeZero` (300 s)
//!   goes to zero; a request held at zero brings one pod back at once, whatever the targets.
//!
//! [`Scaler::decide`] is a pure function of the samples it was given; the controller keeps one
//! per service in memory (a restarted operator starts with empty windows, and so keeps the
//! current replicas until it has seen the load again).

use std::collections::VecDeque;

use lantern_proto::lantern::v1::ModelStatus;

use crate::crd::{Autoscaling, InferenceServiceSpec};

/// The most replicas without `maxReplicas`: the schema's bound on `replicas`.
const MAX_REPLICAS: u32 = 1000;
/// Requests in flight per pod when no target is set.
const DEFAULT_IN_FLIGHT: f64 = 8.0;

/// What a service's pods carry at one moment, summed over them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Requests in flight at the routers, held ones included.
    pub in_flight: f64,
    /// Generation requests waiting to start in the pods' engines.
    pub waiting: f64,
    /// KV cache held by sequences, in pods' worth: each pod's share of its cache, summed (1.5 is
    /// one and a half pods' caches).
    pub kv_cache: f64,
}

impl Load {
    fn idle(&self) -> bool {
        self.in_flight <= 0.0 && self.waiting <= 0.0 && self.kv_cache <= 0.0
    }

    /// The mean of `loads` (zero for none).
    fn mean<'a>(loads: impl Iterator<Item = &'a Load>) -> Load {
        let (mut sum, mut n) = (Load::default(), 0.0);
        for load in loads {
            sum.in_flight += load.in_flight;
            sum.waiting += load.waiting;
            sum.kv_cache += load.kv_cache;
            n += 1.0;
        }
        let n = f64::max(n, 1.0);
        Load { in_flight: sum.in_flight / n, waiting: sum.waiting / n, kv_cache: sum.kv_cache / n }
    }

    /// The engines' part of the load: waiting requests and KV cache use of `model`'s versions,
    /// from each answering pod's report (one list of model statuses per pod).
    pub fn engines(reports: &[Vec<ModelStatus>], model: &str) -> Load {
        let mut load = Load::default();
        for report in reports {
            let engines = report.iter().filter(|m| m.model == model).flat_map(|m| &m.versions).filter_map(|v| v.engine);
            let (mut used, mut total) = (0u64, 0u64);
            for engine in engines {
                load.waiting += f64::from(engine.waiting_sequences);
                used += engine.kv_cache_blocks_used;
                total += engine.kv_cache_blocks_total;
            }
            if total > 0 {
                load.kv_cache += used as f64 / total as f64;
            }
        }
        load
    }
}

/// The load one pod should carry, per metric; a metric without a target does not size the
/// service.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Targets {
    pub in_flight: Option<f64>,
    pub waiting: Option<f64>,
    /// A share of a pod's KV cache (0.7: 70%).
    pub kv_cache: Option<f64>,
}

impl Targets {
    /// The pods `load` asks for: the most any targeted metric asks for.
    fn pods(&self, load: &Load) -> u32 {
        let asks = |value: f64, target: Option<f64>| target.map_or(0, |t| (value / t).ceil() as u32);
        asks(load.in_flight, self.in_flight)
            .max(asks(load.waiting, self.waiting))
            .max(asks(load.kv_cache, self.kv_cache))
    }

    /// The targeted metrics of `load` against their targets, for an Event.
    pub fn describe(&self, load: &Load) -> String {
        let mut parts = Vec::new();
        if let Some(target) = self.in_flight {
            parts.push(format!("{:.1} requests in flight on average against {target} per pod", load.in_flight));
        }
        if let Some(target) = self.waiting {
            parts.push(format!("{:.1} requests waiting on average against {target} per pod", load.waiting));
        }
        if let Some(target) = self.kv_cache {
            let (held, percent) = (load.kv_cache, target * 100.0);
            parts.push(format!("{held:.2} pods' worth of KV cache held on average against {percent:.0}% per pod"));
        }
        parts.join(", ")
    }
}

/// The autoscaler's settings with their defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub targets: Targets,
    pub stable_window: f64,
    pub panic_window: f64,
    /// Panic when the panic window asks for this share of the current pods (2.0: 200%).
    pub panic_threshold: f64,
    pub scale_down_delay: f64,
    pub idle_before_zero: f64,
    pub min: u32,
    pub max: u32,
}

impl Settings {
    /// The settings of a spec with `autoscaling`, or `None` without it (the built-in
    /// autoscaler is off; an HPA or KEDA may drive the scale subresource).
    pub fn of(spec: &InferenceServiceSpec) -> Option<Self> {
        let Autoscaling {
            target_in_flight,
            target_waiting_sequences,
            target_kv_cache_percent,
            stable_window_seconds,
            panic_window_seconds,
            panic_threshold_percent,
            scale_down_delay_seconds,
            idle_seconds_before_zero,
        } = spec.autoscaling.clone()?;
        let seconds = |value: Option<u32>, default: u32| f64::from(value.unwrap_or(default));
        let positive = |value: Option<u32>| value.map(|v| f64::from(v.max(1)));
        let mut targets = Targets {
            in_flight: positive(target_in_flight),
            waiting: positive(target_waiting_sequences),
            kv_cache: positive(target_kv_cache_percent).map(|percent| percent.min(100.0) / 100.0),
        };
        if targets == Targets::default() {
            targets.in_flight = Some(DEFAULT_IN_FLIGHT);
        }
        let min = spec.min_replicas.unwrap_or(1);
        Some(Self {
            targets,
            stable_window: seconds(stable_window_seconds, 60),
            panic_window: seconds(panic_window_seconds, 6),
            panic_threshold: seconds(panic_threshold_percent, 200) / 100.0,
            scale_down_delay: seconds(scale_down_delay_seconds, 30),
            idle_before_zero: seconds(idle_seconds_before_zero, 300),
            min,
            max: spec.max_replicas.unwrap_or(MAX_REPLICAS).max(min),
        })
    }
}

/// What the autoscaler decided, for the status and the events.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub replicas: u32,
    /// The mean load over the stable window.
    pub stable: Load,
    pub panicking: bool,
}

/// One service's windows.
#[derive(Clone, Debug, Default)]
pub struct Scaler {
    /// (seconds, load), oldest first, as long as the longest window.
    samples: VecDeque<(f64, Load)>,
    /// (seconds, replicas wanted before the delay), for the scale-down delay.
    wanted: VecDeque<(f64, u32)>,
    /// Until when panic mode holds.
    panic_until: Option<f64>,
    /// When the load was last above zero (or the scaler began).
    last_active: Option<f64>,
}

impl Scaler {
    /// Records `load` at `now` (seconds on any monotonic clock) and decides the replicas, given
    /// `current` pods wanted now.
    pub fn decide(&mut self, settings: &Settings, now: f64, load: Load, current: u32) -> Decision {
        let keep = settings.stable_window.max(settings.scale_down_delay).max(settings.panic_window);
        self.samples.push_back((now, load));
        while self.samples.front().is_some_and(|&(at, _)| at < now - keep) {
            self.samples.pop_front();
        }
        if !load.idle() || self.last_active.is_none() {
            self.last_active = Some(now);
        }
        let mean = |window: f64| Load::mean(self.samples.iter().filter(|&&(at, _)| at > now - window).map(|(_, l)| l));
        let (stable_load, panic_load) = (mean(settings.stable_window), mean(settings.panic_window));
        let (stable, panic) = (settings.targets.pods(&stable_load), settings.targets.pods(&panic_load));
        if f64::from(panic) >= f64::from(current.max(1)) * settings.panic_threshold && panic > current {
            self.panic_until = Some(now + settings.stable_window);
        }
        let panicking = self.panic_until.is_some_and(|until| now < until);
        let wanted = match panicking {
            // Never down while panicking.
            true => panic.max(stable).max(current),
            false => stable,
        };
        self.wanted.push_back((now, wanted));
        while self.wanted.front().is_some_and(|&(at, _)| at < now - settings.scale_down_delay) {
            self.wanted.pop_front();
        }
        let delayed = self.wanted.iter().map(|&(_, w)| w).max().unwrap_or(wanted);
        let idle = self.last_active.is_some_and(|active| now - active >= settings.idle_before_zero);
        let floor = match (settings.min, idle) {
            (0, true) => 0,
            // Not idle yet: one pod stays, even with minReplicas 0; a held request at zero
            // counts as load, which brings it back.
            (0, false) => 1,
            (min, _) => min,
        };
        let replicas = delayed.clamp(floor, settings.max.max(floor));
        Decision { replicas, stable: stable_load, panicking }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: u32, max: u32) -> Settings {
        Settings {
            targets: Targets { in_flight: Some(4.0), ..Targets::default() },
            stable_window: 60.0,
            panic_window: 6.0,
            panic_threshold: 2.0,
            scale_down_delay: 30.0,
            idle_before_zero: 300.0,
            min,
            max,
        }
    }

    /// `n` requests in flight, nothing else.
    fn flight(n: f64) -> Load {
        Load { in_flight: n, ..Load::default() }
    }

    /// Feeds `load` every 2 s from `from` for `seconds`, following the decisions; returns the
    /// last decision.
    fn run(
        scaler: &mut Scaler,
        settings: &Settings,
        replicas: &mut u32,
        from: f64,
        seconds: f64,
        load: Load,
    ) -> Decision {
        let mut last = None;
        let mut t = from;
        while t < from + seconds {
            let decision = scaler.decide(settings, t, load, *replicas);
            *replicas = decision.replicas;
            last = Some(decision);
            t += 2.0;
        }
        last.unwrap()
    }

    #[test]
    fn a_burst_scales_up_within_the_panic_window_and_holds_through_a_dip() {
        let settings = settings(1, 10);
        let (mut scaler, mut replicas) = (Scaler::default(), 1);
        run(&mut scaler, &settings, &mut replicas, 0.0, 60.0, flight(2.0));
        assert_eq!(replicas, 1);
        // 32 in flight against a target of 4: 8 pods, reached within the panic window.
        let burst = run(&mut scaler, &settings, &mut replicas, 60.0, 6.0, flight(32.0));
        assert!(burst.panicking && replicas == 8, "{burst:?}");
        // A short dip changes nothing: panic mode never scales down.
        run(&mut scaler, &settings, &mut replicas, 66.0, 10.0, flight(0.0));
        assert_eq!(replicas, 8);
    }

    #[test]
    fn a_steady_drop_scales_down_only_after_the_delay_and_never_below_min() {
        let settings = settings(2, 10);
        let (mut scaler, mut replicas) = (Scaler::default(), 6);
        run(&mut scaler, &settings, &mut replicas, 0.0, 60.0, flight(24.0));
        assert_eq!(replicas, 6);
        // The load drops to 4 (one pod's worth): the stable mean falls over the window, and the
        // replicas follow it down after the delay, to the minimum of 2.
        let dropped = run(&mut scaler, &settings, &mut replicas, 60.0, 20.0, flight(4.0));
        assert!(dropped.replicas >= 5, "too fast: {dropped:?}");
        let settled = run(&mut scaler, &settings, &mut replicas, 80.0, 120.0, flight(4.0));
        assert_eq!(settled.replicas, 2);
    }

    #[test]
    fn an_idle_service_goes_to_zero_and_a_held_request_brings_a_pod_back() {
        let settings = Settings { idle_before_zero: 20.0, ..settings(0, 3) };
        let (mut scaler, mut replicas) = (Scaler::default(), 1);
        let idle = run(&mut scaler, &settings, &mut replicas, 0.0, 18.0, flight(0.0));
        assert_eq!(idle.replicas, 1, "one pod stays until the idle time has passed");
        run(&mut scaler, &settings, &mut replicas, 18.0, 4.0, flight(0.0));
        assert_eq!(replicas, 0);
        // One request waits at the router: one pod, at once.
        assert_eq!(scaler.decide(&settings, 30.0, flight(1.0), 0).replicas, 1);
        // The maximum bounds a burst.
        let burst = run(&mut scaler, &settings, &mut replicas, 32.0, 6.0, flight(100.0));
        assert_eq!(burst.replicas, 3);
    }

    #[test]
    fn a_language_model_follows_its_kv_cache_and_queue_not_its_request_count() {
        let targets = Targets { waiting: Some(2.0), kv_cache: Some(0.5), ..Targets::default() };
        let settings = Settings { targets, ..settings(1, 10) };
        let (mut scaler, mut replicas) = (Scaler::default(), 1);
        // 40 requests in flight, none waiting, 1.8 pods' worth of cache held: the cache asks for 4.
        let held = Load { in_flight: 40.0, waiting: 0.0, kv_cache: 1.8 };
        let decision = run(&mut scaler, &settings, &mut replicas, 0.0, 60.0, held);
        assert_eq!(decision.replicas, 4);
        assert!((decision.stable.kv_cache - 1.8).abs() < 1e-9 && decision.stable.in_flight == 40.0, "{decision:?}");
        // A queue of 10 asks for 5 at 2 per pod, more than the cache does.
        run(&mut scaler, &settings, &mut replicas, 60.0, 60.0, Load { waiting: 10.0, ..held });
        assert_eq!(replicas, 5);
        let described = targets.describe(&Load { waiting: 10.0, ..held });
        assert_eq!(
            described,
            "10.0 requests waiting on average against 2 per pod, 1.80 pods' worth of KV cache held on average \
             against 50% per pod"
        );
    }

    #[test]
    fn a_request_held_at_zero_brings_a_pod_back_whatever_the_targets() {
        let targets = Targets { kv_cache: Some(0.7), ..Targets::default() };
        let settings = Settings { targets, idle_before_zero: 10.0, ..settings(0, 3) };
        let (mut scaler, mut replicas) = (Scaler::default(), 1);
        run(&mut scaler, &settings, &mut replicas, 0.0, 20.0, Load::default());
        assert_eq!(replicas, 0);
        assert_eq!(scaler.decide(&settings, 22.0, flight(1.0), 0).replicas, 1);
    }

    #[test]
    fn the_engines_load_sums_the_queues_and_each_pods_share_of_its_cache() {
        use lantern_proto::lantern::v1::{EngineLoad, VersionStatus};
        let version = |waiting, used, total| VersionStatus {
            engine: Some(EngineLoad {
                running_sequences: 1,
                waiting_sequences: waiting,
                kv_cache_blocks_used: used,
                kv_cache_blocks_total: total,
            }),
            ..VersionStatus::default()
        };
        let model = |name: &str, versions| ModelStatus { model: name.to_owned(), versions, ..ModelStatus::default() };
        let reports = vec![
            // A stable and a canary version on one pod: one cache of 200 blocks, 100 held.
            vec![model("chat", vec![version(1, 60, 100), version(2, 40, 100)]), model("other", vec![version(9, 9, 9)])],
            vec![model("chat", vec![version(0, 25, 100)])],
            // A pod still loading: no engine yet.
            vec![model("chat", vec![VersionStatus::default()])],
        ];
        assert_eq!(Load::engines(&reports, "chat"), Load { in_flight: 0.0, waiting: 3.0, kv_cache: 0.75 });
    }

    #[test]
    fn targets_default_to_requests_in_flight_only_when_none_is_set() {
        let spec = |autoscaling| -> InferenceServiceSpec {
            serde_json::from_value(serde_json::json!({
                "model": "chat", "source": {"repository": {"claimName": "models"}}, "autoscaling": autoscaling,
            }))
            .unwrap()
        };
        let kv = Settings::of(&spec(serde_json::json!({"targetKvCachePercent": 70}))).unwrap();
        assert_eq!(kv.targets, Targets { kv_cache: Some(0.7), ..Targets::default() });
        let none = Settings::of(&spec(serde_json::json!({}))).unwrap();
        assert_eq!(none.targets, Targets { in_flight: Some(8.0), ..Targets::default() });
    }

    #[test]
    fn settings_default_from_the_spec() {
        let spec: InferenceServiceSpec = serde_json::from_value(serde_json::json!({
            "model": "adder", "source": {"repository": {"claimName": "models"}},
            "minReplicas": 0, "maxReplicas": 4, "autoscaling": {"targetInFlight": 2},
        }))
        .unwrap();
        let settings = Settings::of(&spec).unwrap();
        assert_eq!((settings.targets.in_flight, settings.min, settings.max), (Some(2.0), 0, 4));
        assert_eq!((settings.stable_window, settings.panic_window, settings.panic_threshold), (60.0, 6.0, 2.0));
        let manual: InferenceServiceSpec = serde_json::from_value(
            serde_json::json!({"model": "adder", "source": {"repository": {"claimName": "models"}}}),
        )
        .unwrap();
        assert_eq!(Settings::of(&manual), None);
    }
}
