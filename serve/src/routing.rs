//! Pure request routing inside a worker: a request names a version, a label, or nothing; nothing
//! means the configured traffic split. A routing key makes the split sticky: the same key lands on
//! the same version on every pod (the hash is fixed, not per-process), and as a canary's weight
//! grows, keys already on the canary stay there.

use std::collections::BTreeMap;
use std::hash::Hasher;

use super::config::ServingConfig;
use crate::error::{Error, Result};

/// What a request asked for in `model_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A version number.
    Version(u64),
    /// A label such as `stable` or `canary`.
    Label(String),
    /// Nothing: the traffic split decides.
    Default,
}

impl Target {
    /// Empty → [`Target::Default`]; all digits → a version; anything else → a label.
    pub fn parse(model_version: &str) -> Result<Self> {
        let text = model_version.trim();
        if text.is_empty() {
            Ok(Self::Default)
        } else if text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse().map(Self::Version).map_err(|_| Error::invalid(format!("version {text:?} is out of range")))
        } else {
            Ok(Self::Label(text.to_owned()))
        }
    }
}

/// What routing needs to know about a model's versions right now.
pub trait VersionView {
    /// Whether the version takes new requests.
    fn is_available(&self, version: u64) -> bool;
    /// The newest version that takes new requests.
    fn newest_available(&self) -> Option<u64>;
    /// Why a known version cannot serve (its state, its failure); `None` if the version is unknown.
    fn unavailable_reason(&self, version: u64) -> Option<String>;
}

/// Picks the version that serves a request. `draw` is a uniform random number used when the
/// request has no routing key.
pub fn route(
    model: &str,
    target: &Target,
    config: &ServingConfig,
    view: &impl VersionView,
    routing_key: Option<&str>,
    draw: u64,
) -> Result<u64> {
    let unavailable = |reason: String| Error::Unavailable { model: model.to_owned(), reason };
    // A label names a version that may not be published yet; a version number names one that
    // must exist.
    let require = |version: u64, label: Option<&str>| {
        if view.is_available(version) {
            return Ok(version);
        }
        let what = match label {
            Some(label) => format!("label {label:?} (version {version})"),
            None => format!("version {version}"),
        };
        match (view.unavailable_reason(version), label) {
            (Some(reason), _) => Err(unavailable(format!("{what} is not available: {reason}"))),
            (None, Some(_)) => Err(unavailable(format!("{what} is not published yet"))),
            (None, None) => Err(Error::VersionNotFound { model: model.to_owned(), version }),
        }
    };
    match target {
        Target::Version(v) => require(*v, None),
        Target::Label(label) => {
            let &version = config
                .labels
                .get(label)
                .ok_or_else(|| Error::LabelNotFound { model: model.to_owned(), label: label.clone() })?;
            require(version, Some(label))
        }
        Target::Default => {
            let point = routing_key.map_or(draw, stable_hash);
            split_point(config, view, point).ok_or_else(|| unavailable("no version is available yet".into()))
        }
    }
}

/// The share of unlabelled traffic each version receives now, in percent.
pub fn traffic_shares(config: &ServingConfig, view: &impl VersionView) -> BTreeMap<u64, f64> {
    let weighted = available_weights(config, view);
    let total: u64 = weighted.iter().map(|&(_, w)| u64::from(w)).sum();
    if total == 0 {
        return view.newest_available().map(|v| (v, 100.0)).into_iter().collect();
    }
    weighted.into_iter().map(|(v, w)| (v, 100.0 * f64::from(w) / total as f64)).collect()
}

/// Maps a point of the `u64` range onto the available weighted versions, newest first.
fn split_point(config: &ServingConfig, view: &impl VersionView, point: u64) -> Option<u64> {
    let weighted = available_weights(config, view);
    let total: u64 = weighted.iter().map(|&(_, w)| u64::from(w)).sum();
    if total == 0 {
        // No weighted version is available: fall back to the newest available one.
        return view.newest_available();
    }
    // Scale the point into [0, total) without modulo bias or overflow.
    let scaled = ((u128::from(point) * u128::from(total)) >> 64) as u64;
    let mut acc = 0u64;
    for &(version, weight) in &weighted {
        acc += u64::from(weight);
        if scaled < acc {
            return Some(version);
        }
    }
    unreachable!("scaled point {scaled} lies below the weight total {total}; this is a bug")
}

/// Weighted versions that are available, newest first, zero weights dropped.
fn available_weights(config: &ServingConfig, view: &impl VersionView) -> Vec<(u64, u32)> {
    config.traffic.iter().rev().filter(|&(&v, &w)| w > 0 && view.is_available(v)).map(|(&v, &w)| (v, w)).collect()
}

/// FNV-1a (the `fnv` crate), then a finalizer mix so similar keys spread over the whole range.
/// Fixed across processes, so every pod routes a key the same way.
fn stable_hash(key: &str) -> u64 {
    let mut fnv = fnv::FnvHasher::default();
    fnv.write(key.as_bytes());
    let mut h = fnv.finish();
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    struct View {
        available: BTreeSet<u64>,
        loading: BTreeSet<u64>,
    }

    impl VersionView for View {
        fn is_available(&self, version: u64) -> bool {
            self.available.contains(&version)
        }
        fn newest_available(&self) -> Option<u64> {
            self.available.last().copied()
        }
        fn unavailable_reason(&self, version: u64) -> Option<String> {
            self.loading.contains(&version).then(|| "LOADING".to_string())
        }
    }

    fn view(available: &[u64], loading: &[u64]) -> View {
        View { available: available.iter().copied().collect(), loading: loading.iter().copied().collect() }
    }

    fn canary(stable_weight: u32, canary_weight: u32) -> ServingConfig {
        ServingConfig {
            labels: [("stable".into(), 1), ("canary".into(), 2)].into(),
            traffic: [(1, stable_weight), (2, canary_weight)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn targets_parse_from_model_version() {
        assert_eq!(Target::parse("").unwrap(), Target::Default);
        assert_eq!(Target::parse("12").unwrap(), Target::Version(12));
        assert_eq!(Target::parse("canary").unwrap(), Target::Label("canary".into()));
        assert!(Target::parse("99999999999999999999999").is_err());
    }

    #[test]
    fn explicit_versions_and_labels_route_or_explain() {
        let cfg = canary(90, 10);
        let v = view(&[1], &[2]);
        assert_eq!(route("m", &Target::Version(1), &cfg, &v, None, 0).unwrap(), 1);
        assert_eq!(route("m", &Target::Label("stable".into()), &cfg, &v, None, 0).unwrap(), 1);
        let loading = route("m", &Target::Label("canary".into()), &cfg, &v, None, 0).unwrap_err();
        assert!(matches!(loading, Error::Unavailable { .. }) && loading.to_string().contains("LOADING"), "{loading}");
        assert!(matches!(route("m", &Target::Version(7), &cfg, &v, None, 0), Err(Error::VersionNotFound { .. })));
        assert!(matches!(
            route("m", &Target::Label("blue".into()), &cfg, &v, None, 0),
            Err(Error::LabelNotFound { .. })
        ));
    }

    #[test]
    fn default_goes_to_the_newest_available_version() {
        let cfg = ServingConfig::default();
        assert_eq!(route("m", &Target::Default, &cfg, &view(&[1, 3], &[4]), None, 123).unwrap(), 3);
        assert!(matches!(
            route("m", &Target::Default, &cfg, &view(&[], &[1]), None, 0),
            Err(Error::Unavailable { .. })
        ));
    }

    #[test]
    fn weighted_split_matches_the_weights() {
        let cfg = canary(90, 10);
        let v = view(&[1, 2], &[]);
        let n = 100_000u64;
        let step = u64::MAX / n;
        let to_canary = (0..n).filter(|i| route("m", &Target::Default, &cfg, &v, None, i * step).unwrap() == 2).count();
        assert!((to_canary as f64 / n as f64 - 0.10).abs() < 0.001, "{to_canary}");
        assert_eq!(traffic_shares(&cfg, &v), BTreeMap::from([(1, 90.0), (2, 10.0)]));
    }

    #[test]
    fn weight_of_an_unavailable_version_goes_to_the_available_ones() {
        let cfg = canary(90, 10);
        let v = view(&[1], &[2]);
        for draw in [0, u64::MAX / 2, u64::MAX] {
            assert_eq!(route("m", &Target::Default, &cfg, &v, None, draw).unwrap(), 1);
        }
        assert_eq!(traffic_shares(&cfg, &v), BTreeMap::from([(1, 100.0)]));
    }

    #[test]
    fn sticky_keys_stay_put_and_stay_on_a_growing_canary() {
        let v = view(&[1, 2], &[]);
        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let at = |cfg: &ServingConfig| -> Vec<u64> {
            keys.iter().map(|k| route("m", &Target::Default, cfg, &v, Some(k), rand_draw(k)).unwrap()).collect()
        };
        let ten = at(&canary(90, 10));
        assert_eq!(ten, at(&canary(90, 10)), "same key, same version");
        let fifty = at(&canary(50, 50));
        for (before, after) in ten.iter().zip(&fifty) {
            assert!(*before != 2 || *after == 2, "a key on the canary left it when its weight grew");
        }
        let share = fifty.iter().filter(|&&x| x == 2).count() as f64 / keys.len() as f64;
        assert!((share - 0.5).abs() < 0.05, "{share}");
    }

    /// A draw that differs per key, to show the key (not the draw) decides.
    fn rand_draw(key: &str) -> u64 {
        (key.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}
