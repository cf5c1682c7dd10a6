//! Training data: token sequences for the language model (windows of text files or the built-in
//! addition task; fine-tuning examples from JSON Lines, [`super::jsonl`]) and feature rows for the
//! MLP (from CSV), each split into a training part and a held-out part, and the order in which
//! ranks read them.
//!
//! The order is a pure function of the seed and the step ([`Order::batch`]): epoch `e` visits the
//! training examples in a permutation seeded by `seed` and `e`, and step `s` takes the global
//! examples `s · B .. (s + 1) · B` of that endless sequence, rank `r` of `n` the `r`-th of `n`
//! equal slices. Resuming needs only the step, and 1 rank or 2 see the same global batches.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use lantern_runtime::llm::codec::TextCodec;

use super::config::{AdditionSpec, CsvSpec, DataSpec, TextSpec};
use super::jsonl;
use crate::error::{Error, Result};

/// The end-of-text token: after the 256 byte tokens.
pub const END_OF_TEXT: u32 = 256;
/// Tokens in the byte-level vocabulary.
pub const VOCAB_SIZE: usize = 257;

/// A token sequence and, for each token, whether the loss counts predicting it (the first token,
/// which nothing predicts, never counts).
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub targets: Vec<bool>,
}

impl Sequence {
    /// A window of text: every token after the first is a target.
    pub fn window(tokens: Vec<u32>) -> Self {
        let targets = (0..tokens.len()).map(|i| i > 0).collect();
        Self { tokens, targets }
    }

    /// Tokens the loss counts.
    pub fn target_count(&self) -> usize {
        self.targets.iter().skip(1).filter(|&&target| target).count()
    }
}

/// A held-out prompt and the answer it should get.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    /// The prompt's tokens, ending where the answer starts.
    pub prompt: Vec<u32>,
    pub reference: String,
    /// The most tokens an answer may take (the reference's, with room to spare).
    pub max_tokens: usize,
}

/// The examples one step trains on.
#[derive(Clone, Debug, PartialEq)]
pub enum Batch {
    /// Token sequences: each token after the first is predicted from those before it, and the
    /// loss counts the predictions of its targets.
    Tokens(Vec<Sequence>),
    /// Feature rows and their targets (a value for regression, a class index for classification).
    Rows { features: Vec<Vec<f32>>, targets: Vec<f32> },
}

/// What the held-out part measures.
#[derive(Clone, Debug, PartialEq)]
pub enum HeldOut {
    /// Addition problems `(a, b)`: exact-answer accuracy of greedy generation, plus the loss on
    /// their token windows.
    Addition { problems: Vec<(u32, u32)>, windows: Vec<Sequence> },
    /// Token windows: loss.
    Tokens(Vec<Sequence>),
    /// Fine-tuning examples: the loss on their answers, and exact-match accuracy of greedy
    /// answers to their questions.
    Answers { sequences: Vec<Sequence>, questions: Vec<Question> },
    /// Rows: loss (and accuracy for classification).
    Rows { features: Vec<Vec<f32>>, targets: Vec<f32> },
}

/// A dataset split into training examples and held-out ones.
#[derive(Clone, Debug)]
pub struct Dataset {
    train: Batch,
    pub held_out: HeldOut,
}

impl Dataset {
    /// Builds the dataset `spec` describes. `context` is the language model's sequence length;
    /// `global_batch` the examples one step needs, which the training part must hold; `codec`
    /// the fine-tuned base's tokenizer and chat template, which JSON Lines need.
    pub fn load(
        spec: &DataSpec,
        context: usize,
        global_batch: usize,
        seed: u64,
        codec: Option<&TextCodec>,
    ) -> Result<Self> {
        let dataset = match (spec, codec) {
            (DataSpec::Addition(spec), _) => addition(spec, context, seed),
            (DataSpec::Text(spec), _) => text(spec, context)?,
            (DataSpec::Csv(spec), _) => csv(spec)?,
            (DataSpec::Jsonl(spec), Some(codec)) => {
                let examples = jsonl::load(spec, context, codec)?;
                Dataset {
                    train: Batch::Tokens(examples.train),
                    held_out: HeldOut::Answers { sequences: examples.held_out, questions: examples.questions },
                }
            }
            (DataSpec::Jsonl(_), None) => {
                return Err(Error::config(
                    "data.jsonl",
                    "JSON Lines train a fine_tune model, whose base tokenizes them",
                ));
            }
        };
        let (field, examples) = match spec {
            DataSpec::Addition(_) => ("data.addition.train_examples", dataset.len()),
            DataSpec::Text(_) => ("data.text.paths", dataset.len()),
            DataSpec::Csv(_) => ("data.csv.path", dataset.len()),
            DataSpec::Jsonl(_) => ("data.jsonl.path", dataset.len()),
        };
        if examples < global_batch {
            return Err(Error::config(
                field,
                format!("the training data holds {examples} examples, fewer than one global batch of {global_batch}"),
            ));
        }
        Ok(dataset)
    }

    /// Tokens the loss counts in the training examples at `indices` (0 for rows).
    pub fn target_count(&self, indices: &[usize]) -> usize {
        match &self.train {
            Batch::Tokens(sequences) => indices.iter().map(|&i| sequences[i].target_count()).sum(),
            Batch::Rows { .. } => 0,
        }
    }

    /// Tokens the model reads in the training examples at `indices`: each sequence's but the
    /// last, which is only predicted (0 for rows).
    pub fn token_count(&self, indices: &[usize]) -> usize {
        match &self.train {
            Batch::Tokens(sequences) => indices.iter().map(|&i| sequences[i].tokens.len().saturating_sub(1)).sum(),
            Batch::Rows { .. } => 0,
        }
    }

    /// Training examples.
    pub fn len(&self) -> usize {
        match &self.train {
            Batch::Tokens(windows) => windows.len(),
            Batch::Rows { targets, .. } => targets.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feature columns (0 for token data).
    pub fn features(&self) -> usize {
        match &self.train {
            Batch::Tokens(_) => 0,
            Batch::Rows { features, .. } => features.first().map_or(0, Vec::len),
        }
    }

    /// The training examples at `indices`.
    pub fn gather(&self, indices: &[usize]) -> Batch {
        match &self.train {
            Batch::Tokens(sequences) => Batch::Tokens(indices.iter().map(|&i| sequences[i].clone()).collect()),
            Batch::Rows { features, targets } => Batch::Rows {
                features: indices.iter().map(|&i| features[i].clone()).collect(),
                targets: indices.iter().map(|&i| targets[i]).collect(),
            },
        }
    }
}

/// The reproducible reading order of a dataset of `examples` training examples.
#[derive(Clone, Debug)]
pub struct Order {
    seed: u64,
    examples: usize,
    epoch: u64,
    permutation: Vec<usize>,
}

impl Order {
    pub fn new(seed: u64, examples: usize) -> Self {
        Self { seed, examples, epoch: u64::MAX, permutation: Vec::new() }
    }

    /// The training examples rank `rank` of `world` reads at `step`.
    pub fn batch(&mut self, step: u64, global_batch: usize, rank: usize, world: usize) -> Vec<usize> {
        share(step, global_batch, rank, world).map(|global| self.example(global)).collect()
    }

    /// Every example of `step`'s global batch, all ranks' shares in rank order.
    pub fn global_batch(&mut self, step: u64, global_batch: usize) -> Vec<usize> {
        self.batch(step, global_batch, 0, 1)
    }

    /// The epoch a step's first example falls in.
    pub fn epoch_of(&self, step: u64, global_batch: usize) -> u64 {
        (step as usize * global_batch / self.examples) as u64
    }

    fn example(&mut self, global: usize) -> usize {
        let epoch = (global / self.examples) as u64;
        if epoch != self.epoch {
            let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            self.permutation = (0..self.examples).collect();
            self.permutation.shuffle(&mut rng);
            self.epoch = epoch;
        }
        self.permutation[global % self.examples]
    }
}

/// The places in the global reading order (epoch after epoch) that rank `rank` of `world` reads
/// at `step`.
pub fn share(step: u64, global_batch: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let share = global_batch / world;
    let first = step as usize * global_batch + rank * share;
    first..first + share
}

/// The text of an addition problem up to the answer: `"17+25="`.
pub fn addition_prompt(a: u32, b: u32) -> String {
    format!("{a}+{b}=")
}

/// Token ids of `text`: its bytes.
pub fn bytes_to_tokens(text: &[u8]) -> Vec<u32> {
    text.iter().map(|&b| u32::from(b)).collect()
}

/// Held-out problems drawn first (so they do not depend on the training size), then training
/// problems drawn from the rest, written `a+b=c` and separated by end-of-text tokens.
fn addition(spec: &AdditionSpec, context: usize, seed: u64) -> Dataset {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xADD);
    let operand = |rng: &mut rand::rngs::StdRng| rng.random_range(0..=spec.max_operand);
    let mut held_out = std::collections::BTreeSet::new();
    while held_out.len() < spec.eval_examples {
        held_out.insert((operand(&mut rng), operand(&mut rng)));
    }
    let problems: Vec<(u32, u32)> = held_out.iter().copied().collect();
    let stream = |problems: &mut dyn Iterator<Item = (u32, u32)>| {
        let mut tokens = Vec::new();
        for (a, b) in problems {
            tokens.extend(bytes_to_tokens(format!("{}{}", addition_prompt(a, b), a + b).as_bytes()));
            tokens.push(END_OF_TEXT);
        }
        tokens
    };
    let mut train = Vec::with_capacity(spec.train_examples);
    while train.len() < spec.train_examples {
        let problem = (operand(&mut rng), operand(&mut rng));
        if !held_out.contains(&problem) {
            train.push(problem);
        }
    }
    let windows = windows(&stream(&mut train.into_iter()), context);
    let held_windows = windows_or_one(&stream(&mut problems.iter().copied()), context);
    Dataset { train: Batch::Tokens(windows), held_out: HeldOut::Addition { problems, windows: held_windows } }
}

/// Every file's bytes followed by an end-of-text token; the last `eval_fraction` of the windows
/// (at least one) are held out.
fn text(spec: &TextSpec, context: usize) -> Result<Dataset> {
    let mut tokens = Vec::new();
    for (index, path) in spec.paths.iter().enumerate() {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::config(format!("data.text.paths[{index}]"), format!("{}: {e}", path.display())))?;
        tokens.extend(bytes_to_tokens(&bytes));
        tokens.push(END_OF_TEXT);
    }
    let mut train = windows(&tokens, context);
    let held = ((train.len() as f64 * spec.eval_fraction).ceil() as usize).min(train.len());
    let held_out = train.split_off(train.len() - held);
    Ok(Dataset { train: Batch::Tokens(train), held_out: HeldOut::Tokens(held_out) })
}

/// Windows of `context + 1` tokens, each starting where the previous one's inputs end.
fn windows(tokens: &[u32], context: usize) -> Vec<Sequence> {
    if tokens.len() <= context {
        return Vec::new();
    }
    (0..(tokens.len() - 1) / context)
        .map(|i| Sequence::window(tokens[i * context..i * context + context + 1].to_vec()))
        .collect()
}

/// [`windows`], or the whole stream padded with end-of-text tokens when it is shorter than one.
fn windows_or_one(tokens: &[u32], context: usize) -> Vec<Sequence> {
    let windows = windows(tokens, context);
    if !windows.is_empty() {
        return windows;
    }
    let mut padded = tokens.to_vec();
    padded.resize(context + 1, END_OF_TEXT);
    vec![Sequence::window(padded)]
}

/// A CSV file with a header: the target column and every other column as an f32 feature. The
/// last `eval_fraction` of the rows (at least one) are held out.
fn csv(spec: &CsvSpec) -> Result<Dataset> {
    let field = "data.csv.path";
    let text = std::fs::read_to_string(&spec.path)
        .map_err(|e| Error::config(field, format!("{}: {e}", spec.path.display())))?;
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or_else(|| Error::config(field, "the file is empty"))?.split(',').collect();
    let target = header.iter().position(|name| name.trim() == spec.target).ok_or_else(|| {
        Error::config("data.csv.target", format!("no column {:?} in the header {header:?}", spec.target))
    })?;
    let (mut features, mut targets) = (Vec::new(), Vec::new());
    for (line_index, line) in lines.enumerate() {
        let row = line_index + 2;
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(Error::config(
                field,
                format!("line {row} has {} cells, the header {}", cells.len(), header.len()),
            ));
        }
        let mut values = Vec::with_capacity(cells.len());
        for (column, cell) in cells.iter().enumerate() {
            let value: f32 = cell.trim().parse().map_err(|_| {
                Error::config(field, format!("line {row}, column {:?}: {cell:?} is not a number", header[column]))
            })?;
            values.push(value);
        }
        let value = values.remove(target);
        if let Some(classes) = spec.classes
            && (value < 0.0 || value.fract() != 0.0 || value as usize >= classes)
        {
            return Err(Error::config(field, format!("line {row}: target {value} is not a class in 0..{classes}")));
        }
        features.push(values);
        targets.push(value);
    }
    if features.is_empty() || header.len() < 2 {
        return Err(Error::config(field, "needs a feature column, a target column and at least one row"));
    }
    let held = ((targets.len() as f64 * spec.eval_fraction).ceil() as usize).clamp(1, targets.len());
    let held_features = features.split_off(features.len() - held);
    let held_targets = targets.split_off(targets.len() - held);
    Ok(Dataset {
        train: Batch::Rows { features, targets },
        held_out: HeldOut::Rows { features: held_features, targets: held_targets },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_split_each_global_batch_and_resuming_needs_only_the_step() {
        let mut order = Order::new(7, 10);
        let whole: Vec<usize> = (0..5).flat_map(|step| order.batch(step, 4, 0, 1)).collect();
        let mut epochs = whole.chunks(10).map(|c| c.to_vec());
        let mut first = epochs.next().unwrap();
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>(), "an epoch visits every example once");
        let mut split = Order::new(7, 10);
        let two: Vec<usize> =
            (0..5).flat_map(|s| [split.batch(s, 4, 0, 2), split.batch(s, 4, 1, 2)].concat()).collect();
        assert_eq!(two, whole, "two ranks read the same global batches");
        assert_eq!(Order::new(7, 10).batch(3, 4, 0, 1), whole[12..16], "step 3 from a fresh start");
        assert_ne!(Order::new(8, 10).batch(0, 4, 0, 1), whole[..4], "the seed changes the order");
    }

    #[test]
    fn addition_holds_out_problems_that_never_appear_in_training() {
        let spec = AdditionSpec { max_operand: 20, train_examples: 300, eval_examples: 15 };
        let dataset = addition(&spec, 16, 1);
        let HeldOut::Addition { problems, .. } = &dataset.held_out else { panic!("addition holds out problems") };
        assert_eq!(problems.len(), 15);
        let Batch::Tokens(windows) = &dataset.train else { panic!("addition trains on tokens") };
        let text: Vec<u8> = windows
            .iter()
            .flat_map(|w| &w.tokens[..16])
            .map(|&t| if t == END_OF_TEXT { b'|' } else { t as u8 })
            .collect();
        let text = String::from_utf8(text).unwrap();
        for &(a, b) in problems {
            assert!(!text.contains(&format!("|{}{}|", addition_prompt(a, b), a + b)), "{a}+{b} leaked");
        }
        assert!(text.contains('+') && text.contains('='));
        assert!(windows.iter().all(|w| w.tokens.len() == 17 && w.target_count() == 16));
        assert_eq!(addition(&spec, 16, 1).held_out, dataset.held_out, "the same seed gives the same split");
    }

    #[test]
    fn csv_rows_split_and_bad_cells_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        std::fs::write(&path, "x,y,label\n1,2,0\n3,4,1\n5,6,1\n7,8,0\n").unwrap();
        let spec = CsvSpec { path: path.clone(), target: "label".into(), classes: Some(2), eval_fraction: 0.25 };
        let dataset = csv(&spec).unwrap();
        assert_eq!((dataset.len(), dataset.features()), (3, 2));
        assert_eq!(dataset.held_out, HeldOut::Rows { features: vec![vec![7.0, 8.0]], targets: vec![0.0] });
        std::fs::write(&path, "x,y,label\n1,oops,0\n").unwrap();
        let error = csv(&spec).unwrap_err().to_string();
        assert!(error.contains("line 2, column \"y\": \"oops\" is not a number"), "{error}");
        std::fs::write(&path, "x,y,label\n1,2,5\n").unwrap();
        assert!(csv(&spec).unwrap_err().to_string().contains("target 5 is not a class in 0..2"));
        let missing = CsvSpec { target: "z".into(), ..spec };
        assert!(csv(&missing).unwrap_err().to_string().contains("data.csv.target"));
    }

    #[test]
    fn data_smaller_than_one_batch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.txt");
        std::fs::write(&path, "hello world, this is short").unwrap();
        let spec = DataSpec::Text(TextSpec { paths: vec![path], eval_fraction: 0.1 });
        let error = Dataset::load(&spec, 8, 16, 0, None).unwrap_err().to_string();
        assert!(error.contains("data.text.paths") && error.contains("fewer than one global batch of 16"), "{error}");
    }
}
