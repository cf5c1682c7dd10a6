//! A model's serving config: which versions to keep loaded (the version policy), which labels
//! name which versions, and how unlabelled traffic splits across versions. The operator replaces
//! it through `ModelService.SetServingConfig`; `--version-policy` sets the starting policy, and
//! `--model-policy MODEL=POLICY` one model's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Which on-disk versions a worker keeps loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The `n` newest versions.
    Latest(u32),
    /// Every version on disk.
    All,
    /// Exactly these versions (those that exist).
    Specific(BTreeSet<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        Self::Latest(1)
    }
}

impl FromStr for VersionPolicy {
    type Err = Error;

    /// `latest`, `latest:N`, `all`, or `specific:V1,V2,…`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid(format!("invalid version policy {s:?}: use latest[:N], all or specific:V1,V2"));
        let (kind, arg) = s.split_once(':').map_or((s, None), |(k, a)| (k, Some(a)));
        let policy = match (kind, arg) {
            ("latest", None) => Self::Latest(1),
            ("latest", Some(n)) => Self::Latest(n.parse().map_err(|_| bad())?),
            ("all", None) => Self::All,
            ("specific", Some(list)) => {
                Self::Specific(list.split(',').map(|v| v.trim().parse().map_err(|_| bad())).collect::<Result<_>>()?)
            }
            _ => return Err(bad()),
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl fmt::Display for VersionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest(n) => write!(f, "latest:{n}"),
            Self::All => f.write_str("all"),
            Self::Specific(versions) => {
                let list: Vec<String> = versions.iter().map(u64::to_string).collect();
                write!(f, "specific:{}", list.join(","))
            }
        }
    }
}

/// One model's starting version policy: `MODEL=POLICY`, as `--model-policy` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPolicy {
    pub model: String,
    pub policy: VersionPolicy,
}

impl FromStr for ModelPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (model, policy) =
            s.split_once('=').ok_or_else(|| Error::invalid(format!("invalid model policy {s:?}: use MODEL=POLICY")))?;
        lantern_runtime::repository::validate_model_name(model)?;
        Ok(Self { model: model.to_owned(), policy: policy.parse()? })
    }
}

impl VersionPolicy {
    fn validate(&self) -> Result<()> {
        match self {
            Self::Latest(0) => Err(Error::invalid("version policy latest needs at least 1 version")),
            Self::Specific(versions) if versions.is_empty() => {
                Err(Error::invalid("version policy specific needs at least one version"))
            }
            Self::Specific(versions) if versions.contains(&0) => Err(Error::invalid("version numbers start at 1")),
            _ => Ok(()),
        }
    }
}

/// Everything that decides which versions are loaded and where requests go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServingConfig {
    pub policy: VersionPolicy,
    /// Label → version. A label may name a version that is not loaded yet.
    pub labels: BTreeMap<String, u64>,
    /// Version → relative weight for requests that name neither version nor label.
    /// Empty: the newest available version takes everything.
    pub traffic: BTreeMap<u64, u32>,
}

impl ServingConfig {
    /// A config with only a policy.
    pub fn with_policy(policy: VersionPolicy) -> Self {
        Self { policy, ..Self::default() }
    }

    /// Checks everything a caller could get wrong; the message names the field.
    pub fn validate(&self) -> Result<()> {
        self.policy.validate()?;
        for (label, &version) in &self.labels {
            if !is_label_name(label) {
                return Err(Error::invalid(format!(
                    "invalid label {label:?}: labels start with a letter and hold letters, digits, '-' and '_'"
                )));
            }
            if version == 0 {
                return Err(Error::invalid(format!("label {label:?} names version 0; versions start at 1")));
            }
        }
        if self.traffic.contains_key(&0) {
            return Err(Error::invalid("traffic names version 0; versions start at 1"));
        }
        if !self.traffic.is_empty() && self.traffic.values().all(|&w| w == 0) {
            return Err(Error::invalid("traffic weights are all zero: send traffic somewhere or leave traffic empty"));
        }
        Ok(())
    }

    /// Versions the config refers to outside the policy (labels and traffic), which stay loaded.
    pub fn pinned_versions(&self) -> BTreeSet<u64> {
        self.labels.values().copied().chain(self.traffic.iter().filter(|&(_, &w)| w > 0).map(|(&v, _)| v)).collect()
    }
}

/// A label cannot look like a version number: `model_version` carries either.
fn is_label_name(label: &str) -> bool {
    let mut bytes = label.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && label.len() <= 63
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print() {
        for text in ["latest:1", "latest:3", "all", "specific:2,5"] {
            assert_eq!(text.parse::<VersionPolicy>().unwrap().to_string(), text);
        }
        assert_eq!("latest".parse::<VersionPolicy>().unwrap(), VersionPolicy::Latest(1));
        for bad in ["latest:0", "newest", "specific:", "specific:a", "all:2", "specific:0"] {
            assert!(bad.parse::<VersionPolicy>().is_err(), "{bad}");
        }
        let tickets = "tickets=specific:2,3".parse::<ModelPolicy>().unwrap();
        assert_eq!((tickets.model.as_str(), tickets.policy.to_string()), ("tickets", "specific:2,3".to_owned()));
        for bad in ["tickets", "=latest:1", "tickets=newest", "../x=all"] {
            assert!(bad.parse::<ModelPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let numeric_label = ServingConfig { labels: [("7".into(), 1)].into(), ..Default::default() };
        assert!(numeric_label.validate().unwrap_err().to_string().contains("\"7\""));
        let zero_weights = ServingConfig { traffic: [(1, 0), (2, 0)].into(), ..Default::default() };
        assert!(zero_weights.validate().unwrap_err().to_string().contains("all zero"));
        let good = ServingConfig {
            labels: [("stable".into(), 1), ("canary".into(), 2)].into(),
            traffic: [(1, 90), (2, 10)].into(),
            ..Default::default()
        };
        assert!(good.validate().is_ok());
        assert_eq!(good.pinned_versions(), BTreeSet::from([1, 2]));
    }
}
