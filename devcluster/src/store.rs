//! The object store: every object as JSON under its resource, namespace and name, one cluster-wide
//! revision counter (the `resourceVersion` of every write, as etcd's revision is), and a bounded
//! history of changes that watches replay from and then follow.
//!
//! The store knows nothing of API semantics (finalizers, generations, schemas): the API layer
//! decides what to write, and the store makes each write atomic, checks the expected
//! resourceVersion (optimistic concurrency) and tells the watchers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast;

/// A resource, independent of the version it is served at: `("", "pods")`,
/// `("lantern.dev", "trainingjobs")`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub group: String,
    pub plural: String,
}

impl ResourceKey {
    pub fn new(group: &str, plural: &str) -> Self {
        Self { group: group.to_owned(), plural: plural.to_owned() }
    }
}

/// Where one object lives; `namespace` is empty for cluster-scoped resources.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub resource: ResourceKey,
    pub namespace: String,
    pub name: String,
}

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One write, as watchers see it: the object after the change (for a deletion, the last state,
/// stamped with the deletion's revision).
#[derive(Clone, Debug)]
pub struct Change {
    pub revision: u64,
    pub kind: ChangeKind,
    pub key: ObjectKey,
    pub object: Value,
    /// The object before a modification.
    pub previous: Option<Value>,
}

/// Why a write was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    NotFound,
    AlreadyExists,
    /// The caller's resourceVersion is not the stored one.
    Conflict {
        stored: u64,
    },
}

/// What a write requires of the key it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Nothing there: a create.
    Absent,
    /// Something there, whatever its version.
    Present,
    /// Something there at this resourceVersion (optimistic concurrency).
    Version(u64),
}

impl Expect {
    /// `Version` when a version is known, else `Present`.
    pub fn existing(version: Option<u64>) -> Self {
        version.map_or(Self::Present, Self::Version)
    }
}

/// The changes kept for watches to resume from; older resourceVersions get 410 Gone.
const HISTORY: usize = 10_000;
/// Changes a slow watcher may fall behind by before it is cut off (and relists).
const WATCH_BUFFER: usize = 4096;

pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
}

struct Inner {
    revision: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: VecDeque<Arc<Change>>,
}

/// Where a watch starts.
pub enum WatchStart {
    /// The changes after this revision are replayed first.
    Replay(Vec<Arc<Change>>),
    /// The revision is older than the history kept.
    TooOld { oldest: u64 },
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Self { inner: Mutex::new(Inner { revision: 1, objects: BTreeMap::new(), history: VecDeque::new() }), changes }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The newest revision.
    pub fn revision(&self) -> u64 {
        self.inner().revision
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Value> {
        self.inner().objects.get(key).cloned()
    }

    /// Every object of `resource` (in `namespace` when given), in name order, and the revision
    /// the list is current at.
    pub fn list(&self, resource: &ResourceKey, namespace: Option<&str>) -> (Vec<(ObjectKey, Value)>, u64) {
        let inner = self.inner();
        let start = ObjectKey {
            resource: resource.clone(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: String::new(),
        };
        let objects = inner
            .objects
            .range(start..)
            .take_while(|(key, _)| &key.resource == resource && namespace.is_none_or(|ns| key.namespace == ns))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        (objects, inner.revision)
    }

    /// Writes `object` at `key` if what is stored there meets `expect`. The object's
    /// `metadata.resourceVersion` is set to the new revision, which is returned with the stored
    /// object.
    pub fn write(&self, key: &ObjectKey, mut object: Value, expect: Expect) -> Result<Value, StoreError> {
        let mut inner = self.inner();
        let previous = inner.objects.get(key).cloned();
        let kind = match (previous.as_ref(), expect) {
            (Some(_), Expect::Absent) => return Err(StoreError::AlreadyExists),
            (None, Expect::Absent) => ChangeKind::Added,
            (None, _) => return Err(StoreError::NotFound),
            (Some(stored), Expect::Version(rv)) => {
                let stored = resource_version(stored);
                if stored != rv {
                    return Err(StoreError::Conflict { stored });
                }
                ChangeKind::Modified
            }
            (Some(_), Expect::Present) => ChangeKind::Modified,
        };
        // As the apiserver does, a write that changes nothing is no write: no new
        // resourceVersion, no watch event.
        if let Some(stored) = previous.as_ref().filter(|stored| same_but_bookkeeping(stored, &object)) {
            return Ok(stored.clone());
        }
        inner.revision += 1;
        let revision = inner.revision;
        object["metadata"]["resourceVersion"] = Value::String(revision.to_string());
        inner.objects.insert(key.clone(), object.clone());
        self.record(&mut inner, Change { revision, kind, key: key.clone(), object: object.clone(), previous });
        Ok(object)
    }

    /// Removes the object at `key` if its resourceVersion is `expect` (or unconditionally);
    /// returns its last state stamped with the deletion's revision.
    pub fn remove(&self, key: &ObjectKey, expect: Option<u64>) -> Result<Value, StoreError> {
        let mut inner = self.inner();
        let stored = inner.objects.get(key).ok_or(StoreError::NotFound)?;
        if let Some(rv) = expect
            && resource_version(stored) != rv
        {
            return Err(StoreError::Conflict { stored: resource_version(stored) });
        }
        let mut object = inner.objects.remove(key).expect("checked above");
        inner.revision += 1;
        let revision = inner.revision;
        object["metadata"]["resourceVersion"] = Value::String(revision.to_string());
        let change =
            Change { revision, kind: ChangeKind::Deleted, key: key.clone(), object: object.clone(), previous: None };
        self.record(&mut inner, change);
        Ok(object)
    }

    fn record(&self, inner: &mut Inner, change: Change) {
        let change = Arc::new(change);
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(change.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Subscribes to changes after `revision`: the ones already made are returned to replay, and
    /// the receiver yields every later one, with no gap and no repeat between the two.
    pub fn watch(&self, revision: u64) -> (WatchStart, broadcast::Receiver<Arc<Change>>) {
        let inner = self.inner();
        let receiver = self.changes.subscribe();
        let oldest = inner.history.front().map_or(inner.revision, |c| c.revision);
        // Revisions in (revision, newest] must all still be in the history.
        if revision + 1 < oldest && revision < inner.revision {
            return (WatchStart::TooOld { oldest }, receiver);
        }
        let replay = inner.history.iter().filter(|c| c.revision > revision).cloned().collect();
        (WatchStart::Replay(replay), receiver)
    }
}

/// Whether two versions of an object differ only in what every write restamps: the
/// resourceVersion and the managed fields' times.
fn same_but_bookkeeping(stored: &Value, written: &Value) -> bool {
    let strip = |object: &Value| {
        let mut object = object.clone();
        if let Some(metadata) = object["metadata"].as_object_mut() {
            metadata.remove("resourceVersion");
            for entry in metadata.get_mut("managedFields").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(entry) = entry.as_object_mut() {
                    entry.remove("time");
                }
            }
        }
        object
    };
    strip(stored) == strip(written)
}

/// An object's `metadata.resourceVersion` as a number (0 when missing or malformed).
pub fn resource_version(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey { resource: ResourceKey::new("", "configmaps"), namespace: namespace.into(), name: name.into() }
    }

    #[test]
    fn a_write_that_changes_nothing_is_no_write() {
        let store = Store::new();
        let object =
            json!({"metadata": {"name": "s", "managedFields": [{"manager": "m", "time": "1"}]}, "spec": {"a": 1}});
        let first = store.write(&key("a", "s"), object.clone(), Expect::Absent).unwrap();
        let mut again = object.clone();
        again["metadata"]["managedFields"][0]["time"] = json!("2");
        let same = store.write(&key("a", "s"), again, Expect::Present).unwrap();
        assert_eq!(same, first, "same resourceVersion, same object");
        let mut changed = object;
        changed["spec"]["a"] = json!(2);
        let next = store.write(&key("a", "s"), changed, Expect::Present).unwrap();
        assert_ne!(next["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);
    }

    #[test]
    fn writes_are_versioned_and_checked() {
        let store = Store::new();
        let created = store.write(&key("a", "x"), json!({"metadata": {"name": "x"}}), Expect::Absent).unwrap();
        let rv = resource_version(&created);
        assert_eq!(store.write(&key("a", "x"), json!({}), Expect::Absent), Err(StoreError::AlreadyExists));
        assert_eq!(store.write(&key("a", "y"), json!({}), Expect::Present), Err(StoreError::NotFound));
        let changed = json!({"metadata": {"name": "x"}, "spec": {"replicas": 2}});
        let updated = store.write(&key("a", "x"), changed, Expect::Version(rv)).unwrap();
        assert!(resource_version(&updated) > rv);
        assert_eq!(
            store.write(&key("a", "x"), json!({}), Expect::Version(rv)),
            Err(StoreError::Conflict { stored: resource_version(&updated) })
        );
        assert_eq!(store.remove(&key("a", "x"), Some(rv)), Err(StoreError::Conflict { stored: rv + 1 }));
        assert!(store.remove(&key("a", "x"), None).is_ok());
        assert!(store.get(&key("a", "x")).is_none());
    }

    #[test]
    fn lists_stay_within_their_resource_and_namespace() {
        let store = Store::new();
        for (ns, name) in [("a", "1"), ("a", "2"), ("b", "1")] {
            store.write(&key(ns, name), json!({"metadata": {}}), Expect::Absent).unwrap();
        }
        let other = ObjectKey { resource: ResourceKey::new("", "secrets"), namespace: "a".into(), name: "s".into() };
        store.write(&other, json!({"metadata": {}}), Expect::Absent).unwrap();
        let resource = ResourceKey::new("", "configmaps");
        assert_eq!(store.list(&resource, Some("a")).0.len(), 2);
        assert_eq!(store.list(&resource, None).0.len(), 3);
        assert_eq!(store.list(&resource, Some("c")).0.len(), 0);
    }

    #[test]
    fn a_watch_replays_what_it_missed_then_follows() {
        let store = Store::new();
        let first = resource_version(&store.write(&key("a", "1"), json!({"metadata": {}}), Expect::Absent).unwrap());
        store.write(&key("a", "2"), json!({"metadata": {}}), Expect::Absent).unwrap();
        let (start, mut receiver) = store.watch(first);
        let WatchStart::Replay(replay) = start else { panic!("the history has it") };
        assert_eq!(replay.iter().map(|c| c.key.name.as_str()).collect::<Vec<_>>(), vec!["2"]);
        store.remove(&key("a", "1"), None).unwrap();
        let next = receiver.try_recv().unwrap();
        assert_eq!((next.kind, next.key.name.as_str()), (ChangeKind::Deleted, "1"));
    }

    #[test]
    fn a_watch_from_before_the_history_is_too_old() {
        let store = Store::new();
        for i in 0..HISTORY + 5 {
            store.write(&key("a", &i.to_string()), json!({"metadata": {}}), Expect::Absent).unwrap();
        }
        assert!(matches!(store.watch(2).0, WatchStart::TooOld { .. }));
        assert!(matches!(store.watch(store.revision() - 3).0, WatchStart::Replay(r) if r.len() == 3));
        assert!(matches!(store.watch(store.revision()).0, WatchStart::Replay(r) if r.is_empty()));
    }
}
