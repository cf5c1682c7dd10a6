//! Training curves as TensorBoard event files. Rank 0 appends a point per step (loss, learning
//! rate, gradient norm, tokens/s) and per published version (its held-out metrics) to
//! `curves/` in the job's state directory, and every version carries the file up to its own step
//! (`curves/` in the version), so the repository keeps each version's history and stock
//! TensorBoard tooling (`tensorboard --logdir`, `tbparse`) reads it.
//!
//! The format is TensorFlow's record file of `Event` protobufs: each record is its length
//! (u64, little-endian), the masked CRC32C of those 8 bytes, the bytes, and their masked CRC32C.
//! The first event names the file version (`brain.Event:2`); each later one holds a `Summary` of
//! scalar values (`simple_value`) at a step. CRC32C (Castagnoli) comes from the `crc` crate; the
//! messages are prost-derived types with only the fields used here, on the wire as TensorFlow's
//! `event.proto` and `summary.proto` have them (no maintained Rust writer of the format exists).
//!
//! [`read`] stops at the first record that is not whole or fails its checksum: a file cut off by
//! a crashed rank reads up to its last whole record.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where curves live, in the state directory and in a version.
pub const CURVES_DIR: &str = "curves";
/// TensorBoard reads files whose names hold `tfevents`.
const FILE_NAME: &str = "events.out.tfevents.lantern";
const FILE_VERSION: &str = "brain.Event:2";

/// Scalar names, as TensorBoard groups them (by the part before `/`).
pub const LOSS: &str = "train/loss";
pub const LEARNING_RATE: &str = "train/learning_rate";
pub const GRADIENT_NORM: &str = "train/gradient_norm";
pub const TOKENS_PER_SECOND: &str = "train/tokens_per_second";
/// A held-out metric `eval_NAME` is the scalar `eval/NAME`.
pub const EVAL_PREFIX: &str = "eval/";

/// Scalars recorded at a step.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub step: u64,
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    pub scalars: Vec<(String, f32)>,
}

impl Point {
    /// `scalars` at `step`, now.
    pub fn now(step: u64, scalars: Vec<(String, f32)>) -> Self {
        let wall_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |elapsed| elapsed.as_secs_f64());
        Self { step, wall_time, scalars }
    }

    /// A version's held-out metrics (`eval_loss` …) as `eval/loss` … at `step`.
    pub fn held_out(step: u64, metrics: &[(String, f64)]) -> Self {
        let scalars = metrics
            .iter()
            .filter_map(|(name, value)| Some((format!("{EVAL_PREFIX}{}", name.strip_prefix("eval_")?), *value as f32)))
            .collect();
        Self::now(step, scalars)
    }
}

/// The event file in a version's (or a state directory's) `curves/`.
pub fn file_in(dir: &Path) -> PathBuf {
    dir.join(CURVES_DIR).join(FILE_NAME)
}

/// The curves of a job, appended as it trains.
pub struct Curves {
    path: PathBuf,
    file: std::fs::File,
}

impl Curves {
    /// Opens the curves in `state_dir` for a run that starts after `step`: points past it (steps
    /// a crashed run trained and this one trains again) are dropped, as is a torn last record.
    pub fn resume(state_dir: &Path, step: u64) -> Result<Self> {
        let path = file_in(state_dir);
        create_parent(&path)?;
        let kept: Vec<Point> = match path.exists() {
            true => read(&path)?.into_iter().filter(|p| p.step <= step).collect(),
            false => Vec::new(),
        };
        write(&path, &kept)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(Self { path, file })
    }

    /// Appends `point` (written through, so a crash loses at most the record being written).
    pub fn append(&mut self, point: &Point) -> Result<()> {
        self.file
            .write_all(&record(&scalar_event(point)))
            .map_err(|e| Error::io(format!("appending to {}", self.path.display()), e))
    }

    /// Writes the points up to `step` into `version_dir`'s `curves/`.
    pub fn write_version(&self, version_dir: &Path, step: u64) -> Result<()> {
        let points: Vec<Point> = read(&self.path)?.into_iter().filter(|p| p.step <= step).collect();
        let path = file_in(version_dir);
        create_parent(&path)?;
        write(&path, &points)
    }
}

fn create_parent(path: &Path) -> Result<()> {
    let dir = path.parent().expect("an event file is in curves/");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// The event file at `path` holding `points`, replacing what was there.
fn write(path: &Path, points: &[Point]) -> Result<()> {
    let mut bytes = record(&Event { wall_time: 0.0, step: 0, what: Some(What::FileVersion(FILE_VERSION.to_owned())) });
    for point in points {
        bytes.extend(record(&scalar_event(point)));
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The points of the event file at `path`, up to its last whole record.
pub fn read(path: &Path) -> Result<Vec<Point>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut points = Vec::new();
    let mut rest = bytes.as_slice();
    while let Some((data, after)) = next_record(rest) {
        rest = after;
        let Ok(event) = <Event as prost::Message>::decode(data) else { break };
        if let Some(What::Summary(summary)) = event.what {
            let scalars = summary.value.into_iter().filter_map(|v| Some((v.tag, v.simple_value?))).collect();
            points.push(Point { step: u64::try_from(event.step).unwrap_or(0), wall_time: event.wall_time, scalars });
        }
    }
    Ok(points)
}

/// The next whole, intact record's data and what follows it.
fn next_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (header, rest) = bytes.split_at_checked(12)?;
    let (length, length_crc) = header.split_at(8);
    if masked_crc(length) != u32::from_le_bytes(length_crc.try_into().ok()?) {
        return None;
    }
    let length = usize::try_from(u64::from_le_bytes(length.try_into().ok()?)).ok()?;
    let (data, rest) = rest.split_at_checked(length)?;
    let (data_crc, rest) = rest.split_at_checked(4)?;
    (masked_crc(data) == u32::from_le_bytes(data_crc.try_into().ok()?)).then_some((data, rest))
}

fn record(event: &Event) -> Vec<u8> {
    let data = prost::Message::encode_to_vec(event);
    let length = (data.len() as u64).to_le_bytes();
    let mut bytes = Vec::with_capacity(data.len() + 16);
    bytes.extend(length);
    bytes.extend(masked_crc(&length).to_le_bytes());
    bytes.extend(&data);
    bytes.extend(masked_crc(&data).to_le_bytes());
    bytes
}

/// CRC32C, rotated and offset as the record format masks it.
fn masked_crc(bytes: &[u8]) -> u32 {
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let crc = CASTAGNOLI.checksum(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn scalar_event(point: &Point) -> Event {
    let value =
        point.scalars.iter().map(|(tag, value)| Value { tag: tag.clone(), simple_value: Some(*value) }).collect();
    Event { wall_time: point.wall_time, step: point.step as i64, what: Some(What::Summary(Summary { value })) }
}

/// `tensorflow.Event`: the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

/// `tensorflow.Summary.Value` with a scalar: `simple_value` is a member of its `value` oneof,
/// so it is on the wire even when 0 (an optional field, encoded the same).
#[derive(Clone, PartialEq, prost::Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_tensorflows() {
        // CRC32C("123456789") = 0xe3069283, the standard check value, then masked.
        assert_eq!(masked_crc(b"123456789"), 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn points_read_back_and_a_torn_record_ends_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut curves = Curves::resume(dir.path(), 0).unwrap();
        for step in 1..=3 {
            curves.append(&Point::now(step, vec![(LOSS.to_owned(), 1.0 / step as f32)])).unwrap();
        }
        let path = file_in(dir.path());
        let points = read(&path).unwrap();
        assert_eq!(
            points.iter().map(|p| (p.step, p.scalars[0].1)).collect::<Vec<_>>(),
            [(1, 1.0), (2, 0.5), (3, 1.0 / 3.0)]
        );

        // A crash mid-record: the file reads to its last whole record, and a resume at step 2
        // keeps steps 1 and 2.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend(&record(&scalar_event(&Point::now(4, vec![(LOSS.to_owned(), 0.1)])))[..10]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap().len(), 3);
        let flipped = bytes.len() - 12;
        bytes[flipped] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2, "a record failing its checksum ends the file");
        let curves = Curves::resume(dir.path(), 2).unwrap();
        assert_eq!(read(&path).unwrap().iter().map(|p| p.step).collect::<Vec<_>>(), [1, 2]);

        let version = tempfile::tempdir().unwrap();
        curves.write_version(version.path(), 1).unwrap();
        assert_eq!(read(&file_in(version.path())).unwrap().len(), 1);
    }

    #[test]
    fn a_zero_is_recorded_not_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut curves = Curves::resume(dir.path(), 0).unwrap();
        curves.append(&Point::now(1, vec![("eval/accuracy".to_owned(), 0.0)])).unwrap();
        assert_eq!(read(&file_in(dir.path())).unwrap()[0].scalars, [("eval/accuracy".to_owned(), 0.0)]);
    }

    #[test]
    fn held_out_metrics_become_eval_scalars() {
        let metrics = [("eval_loss".to_owned(), 0.5), ("loss".to_owned(), 0.7), ("eval_accuracy".to_owned(), 1.0)];
        let point = Point::held_out(9, &metrics);
        assert_eq!(point.scalars, [("eval/loss".to_owned(), 0.5), ("eval/accuracy".to_owned(), 1.0)]);
    }
}
