//! Protocol-neutral tensors: the Open Inference Protocol datatypes, decoding of raw little-endian
//! bytes, and the lossless conversion to `f32` that tensor models consume. The gRPC and REST
//! adapters translate their wire forms into [`Tensor`]; models never see protobuf or JSON.

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// An Open Inference Protocol datatype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    Bytes,
}

impl DataType {
    const ALL: [DataType; 14] = [
        Self::Bool,
        Self::U8,
        Self::U16,
        Self::U32,
        Self::U64,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F16,
        Self::BF16,
        Self::F32,
        Self::F64,
        Self::Bytes,
    ];

    /// The wire name (`FP32`, `INT64`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "UINT8",
            Self::U16 => "UINT16",
            Self::U32 => "UINT32",
            Self::U64 => "UINT64",
            Self::I8 => "INT8",
            Self::I16 => "INT16",
            Self::I32 => "INT32",
            Self::I64 => "INT64",
            Self::F16 => "FP16",
            Self::BF16 => "BF16",
            Self::F32 => "FP32",
            Self::F64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Bytes per element in raw form; `None` for BYTES, whose elements are length-prefixed.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|dt| dt.as_str() == s)
            .ok_or_else(|| Error::invalid(format!("unknown datatype {s:?}")))
    }
}

impl TryFrom<String> for DataType {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DataType> for String {
    fn from(dt: DataType) -> Self {
        dt.as_str().to_owned()
    }
}

/// Element values, widened to one representation per family. `F32` stays separate so the common
/// case is never copied through `f64`.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    Bool(Vec<bool>),
    /// INT8 to INT64.
    Int(Vec<i64>),
    /// UINT8 to UINT64.
    UInt(Vec<u64>),
    /// FP32, and FP16/BF16 (widened losslessly).
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

impl Values {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::Bool(v) => v.len(),
            Self::Int(v) => v.len(),
            Self::UInt(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A named tensor with its declared datatype and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub values: Values,
}

impl Tensor {
    /// A tensor whose element count must match its shape; the error names the tensor.
    pub fn new(name: String, datatype: DataType, shape: Vec<i64>, values: Values) -> Result<Self> {
        let expected = element_count(&name, &shape)?;
        if values.len() != expected {
            return Err(Error::invalid(format!(
                "input {name:?}: shape {shape:?} holds {expected} elements but {} were sent",
                values.len()
            )));
        }
        Ok(Self { name, datatype, shape, values })
    }

    /// An FP32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<i64>, values: Vec<f32>) -> Self {
        Self { name: name.into(), datatype: DataType::F32, shape, values: Values::F32(values) }
    }

    /// The elements as `f32`, refusing any value that `f32` cannot hold exactly and any value
    /// that is not finite (NaN or infinity is never a meaningful model input).
    pub fn to_f32_lossless(&self) -> Result<Vec<f32>> {
        const MAX_EXACT_INT: i64 = 1 << f32::MANTISSA_DIGITS;
        let lossy = |what: String| {
            Error::invalid(format!(
                "input {:?}: {} value {what} cannot be converted to FP32 without loss",
                self.name, self.datatype
            ))
        };
        match &self.values {
            Values::F32(v) => match v.iter().find(|x| !x.is_finite()) {
                Some(x) => Err(not_finite(&self.name, self.datatype, x)),
                None => Ok(v.clone()),
            },
            Values::F64(v) => v
                .iter()
                .map(|&x| {
                    let y = x as f32;
                    match x.is_finite() {
                        false => Err(not_finite(&self.name, self.datatype, &x)),
                        true if f64::from(y) == x => Ok(y),
                        true => Err(lossy(x.to_string())),
                    }
                })
                .collect(),
            Values::Int(v) => {
                v.iter()
                    .map(|&x| {
                        if x.unsigned_abs() <= MAX_EXACT_INT as u64 { Ok(x as f32) } else { Err(lossy(x.to_string())) }
                    })
                    .collect()
            }
            Values::UInt(v) => v
                .iter()
                .map(|&x| if x <= MAX_EXACT_INT as u64 { Ok(x as f32) } else { Err(lossy(x.to_string())) })
                .collect(),
            Values::Bool(_) | Values::Bytes(_) => {
                Err(Error::invalid(format!("input {:?}: {} cannot be converted to FP32", self.name, self.datatype)))
            }
        }
    }

    /// The elements in raw form: little-endian, row-major; BYTES elements length-prefixed.
    pub fn to_raw(&self) -> Vec<u8> {
        let dt = self.datatype;
        let mut out = Vec::with_capacity(self.values.len() * dt.element_size().unwrap_or(8));
        match &self.values {
            Values::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            Values::Int(v) => {
                for &x in v {
                    match dt {
                        DataType::I8 => out.extend((x as i8).to_le_bytes()),
                        DataType::I16 => out.extend((x as i16).to_le_bytes()),
                        DataType::I32 => out.extend((x as i32).to_le_bytes()),
                        _ => out.extend(x.to_le_bytes()),
                    }
                }
            }
            Values::UInt(v) => {
                for &x in v {
                    match dt {
                        DataType::U8 => out.push(x as u8),
                        DataType::U16 => out.extend((x as u16).to_le_bytes()),
                        DataType::U32 => out.extend((x as u32).to_le_bytes()),
                        _ => out.extend(x.to_le_bytes()),
                    }
                }
            }
            Values::F32(v) => {
                for &x in v {
                    match dt {
                        DataType::F16 => out.extend(f16::from_f32(x).to_le_bytes()),
                        DataType::BF16 => out.extend(bf16::from_f32(x).to_le_bytes()),
                        _ => out.extend(x.to_le_bytes()),
                    }
                }
            }
            Values::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Values::Bytes(v) => {
                for item in v {
                    out.extend((item.len() as u32).to_le_bytes());
                    out.extend_from_slice(item);
                }
            }
        }
        out
    }
}

fn not_finite(name: &str, datatype: DataType, value: &dyn fmt::Display) -> Error {
    Error::invalid(format!("input {name:?}: {datatype} value {value} is not a finite number"))
}

/// Decodes raw tensor bytes of `datatype` for the tensor called `name` with `shape`. The byte
/// length is checked against the shape before anything is allocated, so the declared shape can
/// never size an allocation the bytes do not back.
pub fn decode_raw(name: &str, datatype: DataType, shape: &[i64], raw: &[u8]) -> Result<Values> {
    let count = element_count(name, shape)?;
    let Some(size) = datatype.element_size() else {
        return decode_raw_bytes(name, count, raw);
    };
    if count.checked_mul(size) != Some(raw.len()) {
        let needed = count.checked_mul(size).map_or_else(|| "more".to_owned(), |n| n.to_string());
        return Err(Error::invalid(format!(
            "input {name:?}: {datatype} shape {shape:?} needs {needed} raw bytes, got {}",
            raw.len()
        )));
    }
    let chunks = raw.chunks_exact(size);
    Ok(match datatype {
        DataType::Bool => Values::Bool(raw.iter().map(|&b| b != 0).collect()),
        DataType::U8 => Values::UInt(raw.iter().map(|&b| u64::from(b)).collect()),
        DataType::I8 => Values::Int(raw.iter().map(|&b| i64::from(b as i8)).collect()),
        DataType::U16 => Values::UInt(chunks.map(|c| u64::from(u16::from_le_bytes([c[0], c[1]]))).collect()),
        DataType::I16 => Values::Int(chunks.map(|c| i64::from(i16::from_le_bytes([c[0], c[1]]))).collect()),
        DataType::U32 => Values::UInt(chunks.map(|c| u64::from(u32::from_le_bytes(array(c)))).collect()),
        DataType::I32 => Values::Int(chunks.map(|c| i64::from(i32::from_le_bytes(array(c)))).collect()),
        DataType::U64 => Values::UInt(chunks.map(|c| u64::from_le_bytes(array(c))).collect()),
        DataType::I64 => Values::Int(chunks.map(|c| i64::from_le_bytes(array(c))).collect()),
        DataType::F16 => Values::F32(chunks.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        DataType::BF16 => Values::F32(chunks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        DataType::F32 => Values::F32(chunks.map(|c| f32::from_le_bytes(array(c))).collect()),
        DataType::F64 => Values::F64(chunks.map(|c| f64::from_le_bytes(array(c))).collect()),
        DataType::Bytes => unreachable!("BYTES has no fixed element size"),
    })
}

fn decode_raw_bytes(name: &str, count: usize, mut raw: &[u8]) -> Result<Values> {
    // Every element takes at least its 4-byte length prefix.
    if count > raw.len() / 4 {
        return Err(Error::invalid(format!(
            "input {name:?}: shape holds {count} BYTES elements but the raw contents are only {} bytes \
             (each element takes at least 4)",
            raw.len()
        )));
    }
    let mut items = Vec::with_capacity(count);
    while !raw.is_empty() {
        let truncated = || Error::invalid(format!("input {name:?}: BYTES element {} is truncated", items.len()));
        let (len, rest) = raw.split_first_chunk::<4>().ok_or_else(truncated)?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(truncated());
        }
        items.push(rest[..len].to_vec());
        raw = &rest[len..];
    }
    if items.len() != count {
        return Err(Error::invalid(format!(
            "input {name:?}: shape holds {count} BYTES elements but the raw contents hold {}",
            items.len()
        )));
    }
    Ok(Values::Bytes(items))
}

fn array<const N: usize>(chunk: &[u8]) -> [u8; N] {
    chunk.try_into().expect("chunks_exact yields chunks of the element size; this is a bug")
}

/// The number of elements a shape holds; every dimension must be non-negative.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d)
            .map_err(|_| Error::invalid(format!("input {name:?}: shape {shape:?} has a negative dimension")))?;
        acc.checked_mul(d).ok_or_else(|| Error::invalid(format!("input {name:?}: shape {shape:?} is too large")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(dt.as_str().parse::<DataType>().unwrap(), dt);
        }
        assert!("FLOAT".parse::<DataType>().is_err());
    }

    #[test]
    fn raw_fp32_round_trips() {
        let t = Tensor::f32("x", vec![2, 2], vec![1.0, -2.5, 3.25, 0.0]);
        let values = decode_raw("x", DataType::F32, &[2, 2], &t.to_raw()).unwrap();
        assert_eq!(values, t.values);
    }

    #[test]
    fn raw_length_mismatch_names_the_input_and_sizes() {
        let err = decode_raw("x", DataType::F32, &[2, 2], &[0; 15]).unwrap_err().to_string();
        assert!(err.contains("\"x\"") && err.contains("16") && err.contains("15"), "{err}");
    }

    #[test]
    fn raw_bytes_elements_are_length_prefixed() {
        let t = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![2],
            values: Values::Bytes(vec![b"ab".to_vec(), b"".to_vec()]),
        };
        assert_eq!(t.to_raw(), [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(decode_raw("s", DataType::Bytes, &[2], &t.to_raw()).unwrap(), t.values);
        assert!(decode_raw("s", DataType::Bytes, &[2], &[5, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn half_precision_widens_exactly() {
        let raw: Vec<u8> = [1.5f32, -0.25].iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
        assert_eq!(decode_raw("h", DataType::F16, &[2], &raw).unwrap(), Values::F32(vec![1.5, -0.25]));
    }

    #[test]
    fn conversion_to_f32_refuses_lossy_values() {
        let ok = Tensor::new("i".into(), DataType::I64, vec![2], Values::Int(vec![3, -(1 << 24)])).unwrap();
        assert_eq!(ok.to_f32_lossless().unwrap(), vec![3.0, -16777216.0]);
        let big = Tensor::new("i".into(), DataType::I64, vec![1], Values::Int(vec![(1 << 24) + 1])).unwrap();
        assert!(big.to_f32_lossless().is_err());
        let min = Tensor::new("i".into(), DataType::I64, vec![1], Values::Int(vec![i64::MIN])).unwrap();
        assert!(min.to_f32_lossless().is_err());
        let fine = Tensor::new("d".into(), DataType::F64, vec![1], Values::F64(vec![0.5])).unwrap();
        assert_eq!(fine.to_f32_lossless().unwrap(), vec![0.5]);
        let tenth = Tensor::new("d".into(), DataType::F64, vec![1], Values::F64(vec![0.1])).unwrap();
        assert!(tenth.to_f32_lossless().unwrap_err().to_string().contains("without loss"));
    }

    #[test]
    fn huge_declared_shapes_are_refused_before_anything_is_allocated() {
        for shape in [vec![1i64 << 43], vec![1 << 61], vec![1 << 60, 4]] {
            let err = decode_raw("x", DataType::Bytes, &shape, &[]).unwrap_err().to_string();
            assert!(err.contains("\"x\""), "{err}");
            let err = decode_raw("x", DataType::F32, &shape, &[0; 8]).unwrap_err().to_string();
            assert!(err.contains("raw bytes"), "{err}");
        }
        assert!(decode_raw("x", DataType::F64, &[i64::MAX, 2], &[]).is_err());
    }

    #[test]
    fn values_that_are_not_finite_are_refused() {
        for values in [Values::F32(vec![1.0, f32::INFINITY]), Values::F32(vec![f32::NAN])] {
            let t = Tensor::new("x".into(), DataType::F32, vec![values.len() as i64], values).unwrap();
            assert!(t.to_f32_lossless().unwrap_err().to_string().contains("not a finite"));
        }
        let huge = Tensor::new("d".into(), DataType::F64, vec![1], Values::F64(vec![1e300])).unwrap();
        assert!(huge.to_f32_lossless().is_err());
        let raw = f16::INFINITY.to_le_bytes();
        let t = Tensor::new("h".into(), DataType::F16, vec![1], decode_raw("h", DataType::F16, &[1], &raw).unwrap());
        assert!(t.unwrap().to_f32_lossless().is_err());
    }

    #[test]
    fn element_count_mismatch_is_rejected() {
        let err = Tensor::new("x".into(), DataType::F32, vec![2, 3], Values::F32(vec![0.0; 5])).unwrap_err();
        assert!(err.to_string().contains("6 elements"), "{err}");
        assert!(element_count("x", &[-1, 3]).is_err());
    }
}
