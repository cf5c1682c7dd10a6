//! Which pod a request goes to, as pure functions of the pods' loads (requests in flight).
//!
//! - [`two_choices`]: least outstanding requests by the power of two choices — two pods drawn at
//!   random, the less loaded taken. It avoids the herd a global minimum causes when many routers
//!   read the same loads, and is within a constant of the best possible balance.
//! - [`Ring`]: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam), for
//!   requests with an affinity key (a prompt prefix and its model): the key's pod clockwise on
//!   the ring takes it unless that would put it above [`LOAD_FACTOR`] times the mean load, in
//!   which case the next pod on the ring within the bound does. A pod's points depend only on
//!   its own name, so adding or removing a pod moves only the keys that pod takes or held.

/// Points each pod takes on the ring: enough that keys spread evenly over a handful of pods.
const POINTS_PER_POD: u64 = 64;

/// How far above the mean load a pod may go and still take its own keys (HAProxy's
/// `hash-balance-factor 125`).
pub const LOAD_FACTOR: f64 = 1.25;

/// The index of the less loaded of two pods drawn at random (the first drawn on a tie); `None`
/// with no pod. `draw(n)` returns a uniform index below `n`. A load is anything ordered: the
/// pool passes (in flight, routed so far), so that requests sent one at a time, which leave
/// every pod at 0 in flight, still spread evenly.
pub fn two_choices<L: Ord>(loads: &[L], mut draw: impl FnMut(usize) -> usize) -> Option<usize> {
    match loads.len() {
        0 => None,
        1 => Some(0),
        n => {
            let first = draw(n);
            let mut second = draw(n - 1);
            if second >= first {
                second += 1;
            }
            Some(if loads[second] < loads[first] { second } else { first })
        }
    }
}

/// The most requests in flight a pod may have after taking one more keyed request, with `total`
/// in flight over `pods` pods: the mean after the new request times [`LOAD_FACTOR`], rounded up.
pub fn load_bound(total: usize, pods: usize) -> usize {
    ((total + 1) as f64 * LOAD_FACTOR / pods.max(1) as f64).ceil() as usize
}

/// A hash ring over named pods.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// (point, pod index), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// The ring of `pods`, each placed by its name (its address).
    pub fn new<S: AsRef<str>>(pods: &[S]) -> Self {
        let mut points: Vec<(u64, usize)> = pods
            .iter()
            .enumerate()
            .flat_map(|(index, name)| {
                (0..POINTS_PER_POD).map(move |point| (hash(&[name.as_ref().as_bytes(), &point.to_le_bytes()]), index))
            })
            .collect();
        points.sort_unstable();
        Self { points }
    }

    /// The pod for `key` given each pod's load (indexed as the pods the ring was built from):
    /// the first clockwise from the key whose load stays within [`load_bound`] after taking it.
    /// `None` with no pod.
    pub fn pick(&self, key: u64, loads: &[usize]) -> Option<usize> {
        if loads.is_empty() || self.points.is_empty() {
            return None;
        }
        let bound = load_bound(loads.iter().sum(), loads.len());
        let start = self.points.partition_point(|&(point, _)| point < key);
        let clockwise = self.points[start..].iter().chain(&self.points[..start]);
        clockwise.map(|&(_, pod)| pod).find(|&pod| loads[pod] < bound)
    }
}

/// SipHash-1-3 with the standard library's fixed keys over `parts`, each followed by a separator
/// byte so that ("ab", "c") and ("a", "bc") differ: well mixed over the whole ring, and the same
/// in every replica of one router build, which is what keeps a key on one pod whichever router
/// a request meets.
pub fn hash(parts: &[&[u8]]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    for part in parts {
        hasher.write(part);
        hasher.write_u8(0xff);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_takes_the_less_loaded_of_two_distinct_pods() {
        assert_eq!(two_choices::<usize>(&[], |_| 0), None);
        assert_eq!(two_choices(&[9], |_| 0), Some(0));
        // Draws 2 then 0 (of the three others: 0, 1, 3 → 0).
        let mut draws = [2, 0].into_iter();
        assert_eq!(two_choices(&[1, 5, 3, 0], |_| draws.next().unwrap()), Some(0));
        // Draws 1 then 1 (→ 2, never the same pod twice).
        let mut draws = [1, 1].into_iter();
        assert_eq!(two_choices(&[4, 4, 2], |_| draws.next().unwrap()), Some(2));
        // A tie keeps the first drawn.
        let mut draws = [1, 0].into_iter();
        assert_eq!(two_choices(&[3, 3], |_| draws.next().unwrap()), Some(1));
    }

    #[test]
    fn two_choices_spreads_equal_work_evenly() {
        let mut loads = [0usize; 3];
        let mut state = 7u64;
        let mut draw = |n: usize| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        for _ in 0..3000 {
            let pod = two_choices(&loads, &mut draw).unwrap();
            loads[pod] += 1;
        }
        assert!(loads.iter().all(|&l| (990..=1010).contains(&l)), "{loads:?}");
    }

    #[test]
    fn a_key_stays_on_its_pod_while_that_pod_is_within_the_bound() {
        let pods = ["10.0.0.1:8500", "10.0.0.2:8500", "10.0.0.3:8500"];
        let ring = Ring::new(&pods);
        let key = hash(&[b"smollm2", b"You are a helpful assistant."]);
        let owner = ring.pick(key, &[0, 0, 0]).unwrap();
        // Loads within the bound (mean after the request × 1.25) keep it there.
        let mut loads = [2, 2, 2];
        loads[owner] = 2;
        assert_eq!(ring.pick(key, &loads), Some(owner));
        // Far above the others, it spills to the next pod on the ring, the same one each time.
        loads[owner] = 9;
        let spilled = ring.pick(key, &loads).unwrap();
        assert_ne!(spilled, owner);
        assert_eq!(ring.pick(key, &loads), Some(spilled));
    }

    #[test]
    fn keys_spread_over_the_pods_and_only_a_removed_pods_keys_move() {
        let pods: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:8500")).collect();
        let ring = Ring::new(&pods);
        let keys: Vec<u64> = (0..3000u32).map(|k| hash(&[&k.to_le_bytes()])).collect();
        let owners: Vec<usize> = keys.iter().map(|&k| ring.pick(k, &[0, 0, 0]).unwrap()).collect();
        for pod in 0..3 {
            let share = owners.iter().filter(|&&o| o == pod).count();
            assert!((600..=1400).contains(&share), "pod {pod} owns {share} of 3000 keys");
        }
        // Without the third pod, keys the first two owned stay where they were.
        let smaller = Ring::new(&pods[..2]);
        for (&key, &owner) in keys.iter().zip(&owners).filter(|&(_, &owner)| owner < 2) {
            assert_eq!(smaller.pick(key, &[0, 0]), Some(owner));
        }
    }

    #[test]
    fn the_bound_always_leaves_a_pod() {
        let ring = Ring::new(&["a", "b"]);
        for loads in [[0, 0], [100, 0], [0, 100], [7, 7]] {
            assert!(ring.pick(1, &loads).is_some(), "{loads:?}");
        }
        assert_eq!(ring.pick(1, &[]), None);
        assert_eq!(load_bound(0, 3), 1);
        assert_eq!(load_bound(11, 3), 5);
    }
}
