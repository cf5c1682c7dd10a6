//! The built-in autoscaler, Knative's KPA in shape: `replicas` follows the load — requests in
//! flight at the routers plus the requests they hold for want of a pod — over a target per pod.
//!
//! - **Stable mode**: the wanted pods are the mean load over the stable window (60 s) over the
//!   target, rounded up.
//! - **Panic mode**: when the mean over the short panic window (6 s) asks for at least the panic
//!   threshold (200%) of the pods there are, the service scales to that at once and does not
//!   scale down until the load has stayed below the threshold for a whole stable window.
//! - **Scale-down delay**: fewer pods only once every decision over the delay (30 s) asked for
//!   fewer, so a dip does not flap.
//! - **Zero**: with `minReplicas: 0`, a service with no load for `idleSecondsBeforeZero` (300 s)
//!   goes to zero; a request held at zero brings one pod back at once.
//!
//! [`Scaler::decide`] is a pure function of the samples it was given; the controller keeps one
//! per service in memory (a restarted operator starts with empty windows, and so keeps the
//! current replicas until it has seen the load again).

use std::collections::VecDeque;

use crate::crd::{Autoscaling, InferenceServiceSpec};

/// The most replicas without `maxReplicas`: the schema's bound on `replicas`.
const MAX_REPLICAS: u32 = 1000;

/// The autoscaler's settings with their defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Load one pod should carry.
    pub target: f64,
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
            stable_window_seconds,
            panic_window_seconds,
            panic_threshold_percent,
            scale_down_delay_seconds,
            idle_seconds_before_zero,
        } = spec.autoscaling.clone()?;
        let seconds = |value: Option<u32>, default: u32| f64::from(value.unwrap_or(default));
        let min = spec.min_replicas.unwrap_or(1);
        Some(Self {
            target: f64::from(target_in_flight.unwrap_or(8).max(1)),
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
    pub stable_load: f64,
    pub panicking: bool,
}

/// One service's windows.
#[derive(Clone, Debug, Default)]
pub struct Scaler {
    /// (seconds, load), oldest first, as long as the longest window.
    samples: VecDeque<(f64, f64)>,
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
    pub fn decide(&mut self, settings: &Settings, now: f64, load: f64, current: u32) -> Decision {
        let keep = settings.stable_window.max(settings.scale_down_delay).max(settings.panic_window);
        self.samples.push_back((now, load.max(0.0)));
        while self.samples.front().is_some_and(|&(at, _)| at < now - keep) {
            self.samples.pop_front();
        }
        if load > 0.0 || self.last_active.is_none() {
            self.last_active = Some(now);
        }
        let mean = |window: f64| {
            let within: Vec<f64> = self.samples.iter().filter(|&&(at, _)| at > now - window).map(|&(_, l)| l).collect();
            within.iter().sum::<f64>() / within.len().max(1) as f64
        };
        let pods = |load: f64| (load / settings.target).ceil() as u32;
        let (stable_load, panic_load) = (mean(settings.stable_window), mean(settings.panic_window));
        let (stable, panic) = (pods(stable_load), pods(panic_load));
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
        Decision { replicas, stable_load, panicking }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: u32, max: u32) -> Settings {
        Settings {
            target: 4.0,
            stable_window: 60.0,
            panic_window: 6.0,
            panic_threshold: 2.0,
            scale_down_delay: 30.0,
            idle_before_zero: 300.0,
            min,
            max,
        }
    }

    /// Feeds `load` every 2 s from `from` for `seconds`, following the decisions; returns the
    /// last decision.
    fn run(
        scaler: &mut Scaler,
        settings: &Settings,
        replicas: &mut u32,
        from: f64,
        seconds: f64,
        load: f64,
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
        run(&mut scaler, &settings, &mut replicas, 0.0, 60.0, 2.0);
        assert_eq!(replicas, 1);
        // 32 in flight against a target of 4: 8 pods, reached within the panic window.
        let burst = run(&mut scaler, &settings, &mut replicas, 60.0, 6.0, 32.0);
        assert!(burst.panicking && replicas == 8, "{burst:?}");
        // A short dip changes nothing: panic mode never scales down.
        run(&mut scaler, &settings, &mut replicas, 66.0, 10.0, 0.0);
        assert_eq!(replicas, 8);
    }

    #[test]
    fn a_steady_drop_scales_down_only_after_the_delay_and_never_below_min() {
        let settings = settings(2, 10);
        let (mut scaler, mut replicas) = (Scaler::default(), 6);
        run(&mut scaler, &settings, &mut replicas, 0.0, 60.0, 24.0);
        assert_eq!(replicas, 6);
        // The load drops to 4 (one pod's worth): the stable mean falls over the window, and the
        // replicas follow it down after the delay, to the minimum of 2.
        let dropped = run(&mut scaler, &settings, &mut replicas, 60.0, 20.0, 4.0);
        assert!(dropped.replicas >= 5, "too fast: {dropped:?}");
        let settled = run(&mut scaler, &settings, &mut replicas, 80.0, 120.0, 4.0);
        assert_eq!(settled.replicas, 2);
    }

    #[test]
    fn an_idle_service_goes_to_zero_and_a_held_request_brings_a_pod_back() {
        let settings = Settings { idle_before_zero: 20.0, ..settings(0, 3) };
        let (mut scaler, mut replicas) = (Scaler::default(), 1);
        let idle = run(&mut scaler, &settings, &mut replicas, 0.0, 18.0, 0.0);
        assert_eq!(idle.replicas, 1, "one pod stays until the idle time has passed");
        run(&mut scaler, &settings, &mut replicas, 18.0, 4.0, 0.0);
        assert_eq!(replicas, 0);
        // One request waits at the router: one pod, at once.
        assert_eq!(scaler.decide(&settings, 30.0, 1.0, 0).replicas, 1);
        // The maximum bounds a burst.
        let burst = run(&mut scaler, &settings, &mut replicas, 32.0, 6.0, 100.0);
        assert_eq!(burst.replicas, 3);
    }

    #[test]
    fn settings_default_from_the_spec() {
        let spec: InferenceServiceSpec = serde_json::from_value(serde_json::json!({
            "model": "adder", "source": {"repository": {"claimName": "models"}},
            "minReplicas": 0, "maxReplicas": 4, "autoscaling": {"targetInFlight": 2},
        }))
        .unwrap();
        let settings = Settings::of(&spec).unwrap();
        assert_eq!((settings.target, settings.min, settings.max), (2.0, 0, 4));
        assert_eq!((settings.stable_window, settings.panic_window, settings.panic_threshold), (60.0, 6.0, 2.0));
        let manual: InferenceServiceSpec = serde_json::from_value(
            serde_json::json!({"model": "adder", "source": {"repository": {"claimName": "models"}}}),
        )
        .unwrap();
        assert_eq!(Settings::of(&manual), None);
    }
}
