//! Linear layers over GGUF weights (or dense ones). Q4_1 runs on our own kernel; every other
//! type on candle's `QMatMul`.
//!
//! Why a kernel of our own: candle 0.11's Q4_1 × Q8_1 dot product is scalar and computes each
//! (input row, weight row) pair on its own, so decoding several sequences together costs as much
//! as decoding them one after another. [`Q4_1Matrix`] walks each weight row once per step and
//! uses it for every input row while it is in L1 (one `vpmaddubsw` per block on AVX2, a
//! vectorized portable loop elsewhere), and splits the weight rows across threads. The arithmetic is the one ggml defines (input rows quantized
//! to Q8_1 per 32-value block, exact integer dot products, then per block
//! `sum · d_w · d_x + m_w · s_x` accumulated in block order), so results are bit-identical to
//! candle's.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use half::f16;
use rayon::prelude::*;

/// Values per quantization block.
const BLOCK: usize = 32;
/// Bytes of one Q4_1 block in GGUF: `d` (f16), `m` (f16), 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Weight rows per parallel work item.
const ROWS_PER_TASK: usize = 16;
/// Weight rows computed together so their dependent float chains overlap.
const INTERLEAVE: usize = 4;

/// A linear layer `y = x · Wᵀ` over quantized weights `[out, in]`.
#[derive(Debug)]
pub enum QLinear {
    Q4_1(Q4_1Matrix),
    Other(QMatMul),
}

impl QLinear {
    /// Chooses the implementation for `weights`' type.
    pub fn new(weights: QTensor) -> candle_core::Result<Self> {
        match weights.dtype() {
            GgmlDType::Q4_1 => Ok(Self::Q4_1(Q4_1Matrix::new(&weights)?)),
            _ => Ok(Self::Other(QMatMul::from_qtensor(weights)?)),
        }
    }

    /// A linear layer over dense f32 weights `[out, in]`.
    pub fn dense(weights: Tensor) -> Self {
        Self::Other(QMatMul::Tensor(weights))
    }

    /// `x` is `[rows, in]`; the result `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Q4_1(matrix) => matrix.forward(x),
            Self::Other(matmul) => matmul.forward(x),
        }
    }
}

/// Q4_1 weights unpacked for the kernel: per block its scale and minimum as f32 and its 16
/// bytes of nibbles (value `j` in the low nibble of byte `j`, value `j + 16` in the high one).
#[derive(Debug)]
pub struct Q4_1Matrix {
    rows: usize,
    columns: usize,
    scales: Vec<f32>,
    minimums: Vec<f32>,
    nibbles: Vec<[u8; 16]>,
}

/// One input row block quantized to Q8_1: scale, scale × sum of the values, 32 signed values.
#[derive(Clone, Copy, Debug)]
struct Q8_1Block {
    d: f32,
    s: f32,
    qs: [i8; BLOCK],
}

impl Q4_1Matrix {
    fn new(weights: &QTensor) -> candle_core::Result<Self> {
        let (rows, columns) = weights.shape().dims2()?;
        if columns % BLOCK != 0 {
            candle_core::bail!("Q4_1 weights need a multiple of {BLOCK} columns, got {columns}");
        }
        let data = weights.data()?;
        let blocks = rows * columns / BLOCK;
        if data.len() != blocks * Q4_1_BYTES {
            candle_core::bail!("Q4_1 weights of {rows}x{columns} hold {} bytes", data.len());
        }
        let half = |bytes: &[u8]| f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
        let mut matrix = Self {
            rows,
            columns,
            scales: Vec::with_capacity(blocks),
            minimums: Vec::with_capacity(blocks),
            nibbles: Vec::with_capacity(blocks),
        };
        for block in data.chunks_exact(Q4_1_BYTES) {
            matrix.scales.push(half(&block[0..2]));
            matrix.minimums.push(half(&block[2..4]));
            matrix.nibbles.push(block[4..].try_into().expect("a Q4_1 block holds 16 bytes of nibbles; this is a bug"));
        }
        Ok(matrix)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, columns) = x.dims2()?;
        if columns != self.columns {
            candle_core::bail!("input of width {columns} for Q4_1 weights of width {}", self.columns);
        }
        let input = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Tensor::from_vec(self.matmul(&input, rows), (rows, self.rows), x.device())
    }

    /// `N` consecutive weight rows from `first` against every quantized input row, written to
    /// `out` as `[N][input rows]`. The rows' accumulations are independent chains the CPU
    /// overlaps; each keeps ggml's block order and per-block arithmetic, so results stay exact.
    fn dot_rows<const N: usize>(&self, first: usize, quantized: &[Q8_1Block], out: &mut [f32]) {
        let blocks_per_row = self.columns / BLOCK;
        let inputs = quantized.len() / blocks_per_row;
        for (input, x_row) in quantized.chunks_exact(blocks_per_row).enumerate() {
            let mut acc = [0.0f32; N];
            for (b, x) in x_row.iter().enumerate() {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let block = (first + r) * blocks_per_row + b;
                    let dot = block_dot(&self.nibbles[block], &x.qs) as f32;
                    *acc += dot * self.scales[block] * x.d + self.minimums[block] * x.s;
                }
            }
            for (r, &value) in acc.iter().enumerate() {
                out[r * inputs + input] = value;
            }
        }
    }

    /// `[rows, columns]` f32 input times the transposed weights: `[rows, self.rows]`.
    fn matmul(&self, input: &[f32], rows: usize) -> Vec<f32> {
        let quantized: Vec<Q8_1Block> = input.chunks_exact(BLOCK).map(quantize_q8_1).collect();
        // Computed transposed ([weight row][input row]) so each task writes one contiguous slab.
        let mut transposed = vec![0.0f32; self.rows * rows];
        transposed.par_chunks_mut(ROWS_PER_TASK * rows).enumerate().for_each(|(task, out)| {
            let first_row = task * ROWS_PER_TASK;
            for (group, out) in out.chunks_mut(INTERLEAVE * rows).enumerate() {
                let row = first_row + group * INTERLEAVE;
                match out.len() / rows {
                    INTERLEAVE => self.dot_rows::<INTERLEAVE>(row, &quantized, out),
                    tail => {
                        (0..tail).for_each(|i| self.dot_rows::<1>(row + i, &quantized, &mut out[i * rows..][..rows]))
                    }
                }
            }
        });
        let mut output = vec![0.0f32; rows * self.rows];
        for (row, values) in transposed.chunks_exact(rows).enumerate() {
            for (input_row, &value) in values.iter().enumerate() {
                output[input_row * self.rows + row] = value;
            }
        }
        output
    }
}

/// Exact integer dot product of a Q4_1 block's 32 weights (0..=15) with 32 signed values, on
/// AVX2: one unsigned × signed byte multiply-add for all 32 pairs (`vpmaddubsw`; at most
/// 15 · 127 · 2 per pair, so no saturation), widened to 8 lanes and summed.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn block_dot(nibbles: &[u8; 16], values: &[i8; BLOCK]) -> i32 {
    #[allow(unsafe_code)]
    // SAFETY: this function exists only when the whole build targets AVX2 (the `cfg` above, set by
    // `-C target-cpu=x86-64-v3` in .cargo/config.toml), so every instruction is available.
    unsafe {
        block_dot_avx2(nibbles, values)
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx2")]
fn block_dot_avx2(nibbles: &[u8; 16], values: &[i8; BLOCK]) -> i32 {
    use std::arch::x86_64::*;
    let packed: __m128i = bytemuck::cast(*nibbles);
    let mask = _mm_set1_epi8(0x0F);
    let low = _mm_and_si128(packed, mask);
    let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
    let weights = _mm256_set_m128i(high, low);
    let pairs = _mm256_maddubs_epi16(weights, bytemuck::cast::<[i8; BLOCK], __m256i>(*values));
    let lanes = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    let half = _mm_add_epi32(_mm256_castsi256_si128(lanes), _mm256_extracti128_si256::<1>(lanes));
    let quarter = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
    _mm_cvtsi128_si32(_mm_add_epi32(quarter, _mm_shuffle_epi32::<1>(quarter)))
}

/// The portable form of the block dot product; the compiler vectorizes it.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn block_dot(nibbles: &[u8; 16], values: &[i8; BLOCK]) -> i32 {
    let mut weights = [0i8; BLOCK];
    for j in 0..16 {
        weights[j] = (nibbles[j] & 0x0F) as i8;
        weights[j + 16] = (nibbles[j] >> 4) as i8;
    }
    let mut lanes = [0i32; 8];
    for (x, y) in weights.chunks_exact(8).zip(values.chunks_exact(8)) {
        for (lane, (&p, &q)) in lanes.iter_mut().zip(x.iter().zip(y)) {
            *lane += i32::from(p) * i32::from(q);
        }
    }
    lanes.iter().sum()
}

/// ggml's `quantize_row_q8_1` for one block, with its rounding: the scale and the sum go through
/// f16 exactly as the stored format does.
fn quantize_q8_1(values: &[f32]) -> Q8_1Block {
    let amax = values.iter().fold(0.0f32, |max, v| max.max(v.abs()));
    let d = amax / 127.0;
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; BLOCK];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(values) {
        *q = (v * inverse).round() as i8;
        sum += i32::from(*q);
    }
    let d = f16::from_f32(d);
    let s = f16::from_f32(f16::from_f32(sum as f32).to_f32() * d.to_f32());
    Q8_1Block { d: d.to_f32(), s: s.to_f32(), qs }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Random-ish values with a spread like activations and weights.
    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn the_q4_1_kernel_is_bit_identical_to_candle() {
        let (out, width) = (37, 128);
        let weights = Tensor::from_vec(values(out * width, 7), (out, width), &Device::Cpu).unwrap();
        let quantize = || QTensor::quantize(&weights, GgmlDType::Q4_1).unwrap();
        let ours = QLinear::new(quantize()).unwrap();
        assert!(matches!(ours, QLinear::Q4_1(_)));
        let candle = QMatMul::from_qtensor(quantize()).unwrap();
        for rows in [1, 3, 8] {
            let x = Tensor::from_vec(values(rows * width, rows as u32), (rows, width), &Device::Cpu).unwrap();
            let expected = candle.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(ours.forward(&x).unwrap().to_vec2::<f32>().unwrap(), expected, "{rows} rows");
        }
    }

    #[test]
    fn other_types_use_candle() {
        let weights = Tensor::from_vec(values(32 * 64, 1), (32, 64), &Device::Cpu).unwrap();
        let quantized = QTensor::quantize(&weights, GgmlDType::Q8_0).unwrap();
        assert!(matches!(QLinear::new(quantized).unwrap(), QLinear::Other(_)));
    }
}
