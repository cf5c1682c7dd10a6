//! Stop strings over a token stream. Text arrives in deltas that may split a stop string across
//! tokens; [`StopMatcher`] holds back any tail that could still become a stop string, so a
//! streaming client never sees part of one, and cuts the text where a stop string begins.

/// Watches generated text for stop strings.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: a possible prefix of a stop string.
    pending: String,
}

/// What to do with a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Text safe to send to the client now.
    pub text: String,
    /// A stop string was found; generation ends and nothing after it is sent.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), pending: String::new() }
    }

    /// Adds a delta of generated text.
    pub fn push(&mut self, delta: &str) -> Release {
        self.pending.push_str(delta);
        if let Some(at) = self.stops.iter().filter_map(|stop| self.pending.find(stop.as_str())).min() {
            let text = self.pending[..at].to_owned();
            self.pending.clear();
            return Release { text, stopped: true };
        }
        let hold = self.longest_stop_prefix_at_end();
        let text = self.pending[..self.pending.len() - hold].to_owned();
        self.pending.drain(..self.pending.len() - hold);
        Release { text, stopped: false }
    }

    /// Releases what was held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn longest_stop_prefix_at_end(&self) -> usize {
        let pending = &self.pending;
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len().min(pending.len() + 1))
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n) && pending.ends_with(&stop[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for delta in deltas {
            let release = matcher.push(delta);
            out.push_str(&release.text);
            if release.stopped {
                return (out, true);
            }
        }
        out.push_str(&matcher.finish());
        (out, false)
    }

    #[test]
    fn text_without_stops_passes_through() {
        assert_eq!(run(&["###"], &["Hello", " world"]), ("Hello world".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn a_stop_split_across_deltas_is_cut_and_never_shown() {
        let mut matcher = StopMatcher::new(["<END>".to_string()]);
        assert_eq!(matcher.push("The answer<E"), Release { text: "The answer".into(), stopped: false });
        assert_eq!(matcher.push("N"), Release { text: String::new(), stopped: false });
        assert_eq!(matcher.push("D> trailing"), Release { text: String::new(), stopped: true });
    }

    #[test]
    fn a_false_start_is_released_once_it_cannot_match() {
        assert_eq!(run(&["<END>"], &["a<E", "X b"]), ("a<EX b".into(), false));
        assert_eq!(run(&["<END>"], &["a<E"]), ("a<E".into(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["world", "lo"], &["Hello world"]), ("Hel".into(), true));
    }

    #[test]
    fn multibyte_text_is_held_on_character_boundaries() {
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
        assert_eq!(run(&["🦀x"], &["a🦀", "y"]), ("a🦀y".into(), false));
    }
}
