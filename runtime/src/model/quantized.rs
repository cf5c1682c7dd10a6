//! Linear layers over GGUF weights (or dense ones). Q4_0, Q4_1 and Q8_0 on the CPU run on our
//! own kernel, and so do Q5_0 and Q5_1, converted to Q8_0 as they load; every other type, and
//! every type on a GPU, on candle's `QMatMul`.
//!
//! Why Q5 is converted: candle's Q5_0 and Q5_1 dot products are scalar (`vec_dot_unopt`), and
//! they are the matrices a k-quant file holds where its 256-value super-blocks do not divide the
//! rows (llama.cpp writes Q4_K's as Q5_0: most of SmolLM2's). SmolLM2 written as Q4_K decoded at
//! 41 tokens/s with 80% of a profile in that loop. As Q8_0 the weights take 34 bytes a block
//! instead of 22 or 24, and each value moves by at most half a Q8_0 step, a sixteenth of a Q5
//! step.
//!
//! Why a kernel of our own: candle 0.11's Q4_1 × Q8_1 dot product is scalar (its Q4_0 one too:
//! SmolLM2 as Q4_0 decoded at 61 tokens/s on candle's, against 152 for Q4_1 on ours), and its Q8_0 one
//! computes each (input row, weight row) pair on its own, so decoding several sequences together
//! costs as much as decoding them one after another (SmolLM2's tied output layer is Q8_0: 15% of
//! a decode profile went to candle's per-pair Q8_0 dot).
//!
//! [`KernelMatrix`] repacks the weights when it loads them: the blocks of [`GROUP`] consecutive
//! rows are interleaved four values at a time, so one 256-bit register holds four values of each
//! of eight rows and one instruction (`vpdpbusd` where the CPU has AVX-512 VNNI, checked at run
//! time; `vpmaddubsw` and `vpmaddwd` on AVX2; a vectorized portable loop elsewhere) multiplies
//! eight rows by four input values. A block then ends with one conversion and one fused
//! multiply-add for all eight rows, where a row at a time paid them per row; each group's
//! weights are loaded and unpacked once for [`INPUTS_TOGETHER`] input rows ([`WIDE_TILE`] with
//! VNNI), and the groups are
//! split across threads. Layers that read the same input ([`QLinear::forward_all`]: a block's
//! q/k/v, its gate and up) quantize it once and share one parallel pass, so a decode step waits
//! for the threads four times per block instead of seven.
//!
//! The arithmetic is ggml's: input rows quantized to Q8_1 per 32-value block, exact integer dot
//! products per block, then `Σ sum · d_w · d_x (+ Σ m_w · s_x for Q4_1's minimums; Q4_0's values
//! `d · (q − 8)` are Q4_1's with the minimum `−8 · d`)`, accumulated
//! block by block in that order; Q8_0's signed weights go through the unsigned × signed
//! instructions with the input shifted by 128 (VNNI; the shift's `128 · Σ w` is subtracted up
//! front) or as magnitudes with their signs moved to the values (AVX2), the same integers either
//! way. Results differ from candle's by float rounding only, and every (weight row, input row)
//! result is computed the same way whatever else is in the batch and whichever instruction set
//! runs it, which keeps batched decoding bit-identical to decoding alone.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use half::f16;
use lanes::{Lanes, Sums};
use rayon::prelude::*;

/// Values per quantization block.
const BLOCK: usize = 32;
/// Weight rows stored interleaved and computed together (eight 32-bit lanes of a 256-bit
/// register, one per row).
const GROUP: usize = 8;
/// Row groups per parallel work item.
const GROUPS_PER_TASK: usize = 2;
/// Input rows computed together, so each group's weights are loaded and unpacked once for all
/// of them (their accumulators and a chunk of weights fit AVX2's 16 vector registers).
const INPUTS_TOGETHER: usize = 4;
/// Input rows computed together where AVX-512's 32 vector registers hold their accumulators.
const WIDE_TILE: usize = 8;

/// A linear layer `y = x · Wᵀ` over quantized weights `[out, in]`.
#[derive(Debug)]
pub enum QLinear {
    Q4_0(KernelMatrix<Q4_0Group>),
    Q4_1(KernelMatrix<Q4_1Group>),
    Q8_0(KernelMatrix<Q8_0Group>),
    Other(QMatMul),
}

impl QLinear {
    /// Chooses the implementation for `weights`' type and device: our kernel for Q4_0, Q4_1 and
    /// Q8_0 on the CPU (Q5_0 and Q5_1 converted to Q8_0 for it), candle's everywhere else (its
    /// CUDA kernels on a GPU).
    pub fn new(weights: QTensor) -> candle_core::Result<Self> {
        match weights.dtype() {
            GgmlDType::Q4_0 if weights.device().is_cpu() => Ok(Self::Q4_0(KernelMatrix::new(&weights)?)),
            GgmlDType::Q4_1 if weights.device().is_cpu() => Ok(Self::Q4_1(KernelMatrix::new(&weights)?)),
            GgmlDType::Q8_0 if weights.device().is_cpu() => Ok(Self::Q8_0(KernelMatrix::new(&weights)?)),
            GgmlDType::Q5_0 | GgmlDType::Q5_1 if weights.device().is_cpu() => {
                let values = weights.dequantize(&weights.device())?;
                Ok(Self::Q8_0(KernelMatrix::new(&QTensor::quantize(&values, GgmlDType::Q8_0)?)?))
            }
            _ => Ok(Self::Other(QMatMul::from_qtensor(weights)?)),
        }
    }

    /// A linear layer over dense f32 weights `[out, in]`.
    pub fn dense(weights: Tensor) -> Self {
        Self::Other(QMatMul::Tensor(weights))
    }

    /// The weights' `[out, in]`.
    pub fn shape(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Self::Q4_0(matrix) => Ok((matrix.rows, matrix.columns)),
            Self::Q4_1(matrix) => Ok((matrix.rows, matrix.columns)),
            Self::Q8_0(matrix) => Ok((matrix.rows, matrix.columns)),
            Self::Other(QMatMul::QTensor(weights)) => weights.shape().dims2(),
            Self::Other(QMatMul::Tensor(weights) | QMatMul::TensorF16(weights)) => weights.dims2(),
        }
    }

    /// `x` is `[rows, in]`; the result `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Q4_0(matrix) => matrix.forward(x),
            Self::Q4_1(matrix) => matrix.forward(x),
            Self::Q8_0(matrix) => matrix.forward(x),
            Self::Other(matmul) => matmul.forward(x),
        }
    }

    /// `x` (`[rows, in]` row-major) through several layers that read it, each result `[rows, out]`
    /// row-major and bit for bit what [`Self::forward`] gives. Layers all on our kernel with one
    /// block type run in one parallel pass (the input quantized once, one wait for the threads
    /// instead of one per layer: a decode step's projections are small), reading `x` where it
    /// is; others one by one, on a tensor of it on `device`.
    pub fn forward_all<const N: usize>(
        layers: [&QLinear; N],
        x: &[f32],
        rows: usize,
        device: &candle_core::Device,
    ) -> candle_core::Result<[Vec<f32>; N]> {
        if rows == 0 {
            return Ok(std::array::from_fn(|_| Vec::new()));
        }
        let results = if let Some(matrices) = kernels(&layers, |l| if let Self::Q4_1(m) = l { Some(m) } else { None }) {
            KernelMatrix::forward_all(&matrices, x, rows)?
        } else if let Some(matrices) = kernels(&layers, |l| if let Self::Q4_0(m) = l { Some(m) } else { None }) {
            KernelMatrix::forward_all(&matrices, x, rows)?
        } else if let Some(matrices) = kernels(&layers, |l| if let Self::Q8_0(m) = l { Some(m) } else { None }) {
            KernelMatrix::forward_all(&matrices, x, rows)?
        } else {
            let x = Tensor::from_slice(x, (rows, x.len() / rows.max(1)), device)?;
            let each = layers.iter().map(|layer| layer.forward(&x)?.flatten_all()?.to_vec1::<f32>());
            each.collect::<candle_core::Result<Vec<_>>>()?
        };
        let mut results = results.into_iter();
        Ok(std::array::from_fn(|_| results.next().unwrap_or_default()))
    }
}

/// Every layer's matrix, if each is one `pick` finds.
fn kernels<'a, B: WeightBlock>(
    layers: &[&'a QLinear],
    pick: impl Fn(&'a QLinear) -> Option<&'a KernelMatrix<B>>,
) -> Option<Vec<&'a KernelMatrix<B>>> {
    layers.iter().map(|layer| pick(layer)).collect()
}

/// A GGUF weight format the kernel runs: how a block is stored, how a group of rows' blocks is
/// interleaved, and their products with an input block.
pub trait WeightBlock: Copy + std::fmt::Debug + Send + Sync {
    const DTYPE: GgmlDType;
    /// Bytes of one block in GGUF.
    const BYTES: usize;
    /// Whether blocks carry a minimum (`value = d · q + m`), which adds `m · s_x` per block.
    const HAS_MINIMUM: bool;
    /// The scale and the minimum (0 without one) of the block at `bytes`.
    fn header(bytes: &[u8]) -> (f32, f32);
    /// The input block's sum the minimums multiply: ggml's f16 `s` for a format that stores
    /// minimums (Q4_1, as ggml computes it).
    fn input_sum(x: &Q8_1Block) -> f32 {
        x.s
    }
    /// One block of each of [`GROUP`] rows (their GGUF bytes), interleaved.
    fn interleave(blocks: [&[u8]; GROUP]) -> Self;
    /// The exact integer products of the group's rows with each of `M` input blocks: lane `r`
    /// of result `m` is row `r` times input `m`. `VNNI` picks the block instruction (see
    /// [`lanes`]); always inlined, so the choice is made once per task.
    fn products<const VNNI: bool, const M: usize>(&self, x: [&Q8_1Block; M]) -> [Sums; M];
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// One Q4_1 block of each of eight rows. GGUF stores `d` (f16), `m` (f16), then 16 bytes of
/// nibbles (value `i` in the low nibble of byte `i`, value `i + 16` in the high one); chunk `j`
/// here holds each row's bytes `4j..4j + 4`, row `r` at `4r`: its low nibbles are values
/// `4j..4j + 4`, its high ones values `16 + 4j..`.
#[derive(Clone, Copy, Debug)]
pub struct Q4_1Group([[u8; 4 * GROUP]; 4]);

impl WeightBlock for Q4_1Group {
    const DTYPE: GgmlDType = GgmlDType::Q4_1;
    const BYTES: usize = 20;
    const HAS_MINIMUM: bool = true;

    fn header(bytes: &[u8]) -> (f32, f32) {
        (half(&bytes[0..2]), half(&bytes[2..4]))
    }

    fn interleave(blocks: [&[u8]; GROUP]) -> Self {
        Self(std::array::from_fn(|j| std::array::from_fn(|i| blocks[i / 4][4 + 4 * j + i % 4])))
    }

    #[inline(always)]
    fn products<const VNNI: bool, const M: usize>(&self, x: [&Q8_1Block; M]) -> [Sums; M] {
        lanes::q4_1_products::<VNNI, M>(&self.0, x)
    }
}

/// One Q4_0 block of each of eight rows, laid out as [`Q4_1Group`]. GGUF stores `d` (f16), then
/// the 16 bytes of nibbles; a value is `d · (q − 8)`, a Q4_1 value with the minimum `−8 · d`.
#[derive(Clone, Copy, Debug)]
pub struct Q4_0Group([[u8; 4 * GROUP]; 4]);

impl WeightBlock for Q4_0Group {
    const DTYPE: GgmlDType = GgmlDType::Q4_0;
    const BYTES: usize = 18;
    const HAS_MINIMUM: bool = true;

    fn header(bytes: &[u8]) -> (f32, f32) {
        let d = half(&bytes[0..2]);
        (d, -8.0 * d)
    }

    /// Exact: ggml's Q4_0 dot product is all integers (`Σ (q − 8) · x`), so the `−8 · Σ x` term
    /// takes the input's exact sum, not its f16 rounding.
    fn input_sum(x: &Q8_1Block) -> f32 {
        x.sum
    }

    fn interleave(blocks: [&[u8]; GROUP]) -> Self {
        Self(std::array::from_fn(|j| std::array::from_fn(|i| blocks[i / 4][2 + 4 * j + i % 4])))
    }

    #[inline(always)]
    fn products<const VNNI: bool, const M: usize>(&self, x: [&Q8_1Block; M]) -> [Sums; M] {
        lanes::q4_1_products::<VNNI, M>(&self.0, x)
    }
}

/// One Q8_0 block of each of eight rows. GGUF stores `d` (f16), then 32 signed values; chunk
/// `j` here holds each row's values `4j..4j + 4`, row `r` at `4r`.
#[derive(Clone, Copy, Debug)]
pub struct Q8_0Group {
    values: [[i8; 4 * GROUP]; BLOCK / 4],
    /// `-128 · Σ w` per row: what shifting the input by 128 adds to its products.
    offsets: [i32; GROUP],
}

impl WeightBlock for Q8_0Group {
    const DTYPE: GgmlDType = GgmlDType::Q8_0;
    const BYTES: usize = 34;
    const HAS_MINIMUM: bool = false;

    fn header(bytes: &[u8]) -> (f32, f32) {
        (half(&bytes[0..2]), 0.0)
    }

    fn interleave(blocks: [&[u8]; GROUP]) -> Self {
        let value = |row: usize, i: usize| blocks[row][2 + i] as i8;
        Self {
            values: std::array::from_fn(|j| std::array::from_fn(|i| value(i / 4, 4 * j + i % 4))),
            offsets: std::array::from_fn(|row| -128 * (0..BLOCK).map(|i| i32::from(value(row, i))).sum::<i32>()),
        }
    }

    #[inline(always)]
    fn products<const VNNI: bool, const M: usize>(&self, x: [&Q8_1Block; M]) -> [Sums; M] {
        lanes::q8_0_products::<VNNI, M>(&self.values, &self.offsets, x)
    }
}

/// Weights repacked for the kernel: per (group of [`GROUP`] rows, block) the rows' scales (and
/// minimums, for formats with one) as f32 and their values interleaved. A last group short of
/// rows is padded with zero blocks, whose results are dropped.
#[derive(Debug)]
pub struct KernelMatrix<B: WeightBlock> {
    rows: usize,
    columns: usize,
    scales: Vec<[f32; GROUP]>,
    minimums: Vec<[f32; GROUP]>,
    blocks: Vec<B>,
}

/// One input row block quantized to Q8_1: scale, scale × sum of the values (rounded to f16 as
/// ggml stores it, and exact), the 32 signed values four to a word, and the same values plus 128
/// as unsigned bytes (for Q8_0 on VNNI).
#[derive(Clone, Copy, Debug)]
pub struct Q8_1Block {
    d: f32,
    s: f32,
    sum: f32,
    words: [i32; BLOCK / 4],
    shifted: [i32; BLOCK / 4],
}

impl<B: WeightBlock> KernelMatrix<B> {
    fn new(weights: &QTensor) -> candle_core::Result<Self> {
        let kind = B::DTYPE;
        let (rows, columns) = weights.shape().dims2()?;
        if columns % BLOCK != 0 {
            candle_core::bail!("{kind:?} weights need a multiple of {BLOCK} columns, got {columns}");
        }
        let data = weights.data()?;
        let blocks_per_row = columns / BLOCK;
        if data.len() != rows * blocks_per_row * B::BYTES {
            candle_core::bail!("{kind:?} weights of {rows}x{columns} hold {} bytes", data.len());
        }
        let padding = vec![0u8; B::BYTES];
        let block = |row: usize, b: usize| match row < rows {
            true => &data[(row * blocks_per_row + b) * B::BYTES..][..B::BYTES],
            false => padding.as_slice(),
        };
        let entries = rows.div_ceil(GROUP) * blocks_per_row;
        let mut matrix = Self {
            rows,
            columns,
            scales: Vec::with_capacity(entries),
            minimums: Vec::with_capacity(if B::HAS_MINIMUM { entries } else { 0 }),
            blocks: Vec::with_capacity(entries),
        };
        for group in 0..rows.div_ceil(GROUP) {
            for b in 0..blocks_per_row {
                let blocks: [&[u8]; GROUP] = std::array::from_fn(|r| block(group * GROUP + r, b));
                let headers = blocks.map(B::header);
                matrix.scales.push(headers.map(|(scale, _)| scale));
                if B::HAS_MINIMUM {
                    matrix.minimums.push(headers.map(|(_, minimum)| minimum));
                }
                matrix.blocks.push(B::interleave(blocks));
            }
        }
        Ok(matrix)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let rows = x.dim(0)?;
        let input = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let [output] = Self::forward_all(&[self], &input, rows)?.try_into().unwrap_or_default();
        Tensor::from_vec(output, (rows, self.rows), x.device())
    }

    /// `x` (`[rows, columns]` row-major) through each of `matrices`, `[rows, matrix rows]` each,
    /// in one parallel pass.
    fn forward_all(matrices: &[&Self], x: &[f32], rows: usize) -> candle_core::Result<Vec<Vec<f32>>> {
        if let Some(matrix) = matrices.iter().find(|m| x.len() != rows * m.columns) {
            candle_core::bail!(
                "{} input values for {rows} rows of {:?} weights of width {}",
                x.len(),
                B::DTYPE,
                matrix.columns
            );
        }
        Ok(Self::matmul_all(matrices, x, rows, lanes::has_vnni()))
    }

    /// The row groups, padding included.
    fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// A group's rows against `M` input rows: `[input][row of the group]`. Each (weight row,
    /// input row) pair accumulates block by block in its own lane, the same operations in the
    /// same order whatever the tile, so a row's result is the same in any batch.
    #[inline(always)]
    fn tile<const M: usize, const VNNI: bool>(&self, group: usize, x_rows: [&[Q8_1Block]; M]) -> [[f32; GROUP]; M] {
        let blocks_per_row = self.columns / BLOCK;
        let first = group * blocks_per_row;
        let mut accumulators = [Lanes::zero(); M];
        for b in 0..blocks_per_row {
            let x = x_rows.map(|row| &row[b]);
            let sums = self.blocks[first + b].products::<VNNI, M>(x);
            for m in 0..M {
                accumulators[m] = accumulators[m].add_products(sums[m], &self.scales[first + b], x[m].d);
                if B::HAS_MINIMUM {
                    accumulators[m] = accumulators[m].add_minimums(&self.minimums[first + b], B::input_sum(x[m]));
                }
            }
        }
        accumulators.map(Lanes::to_array)
    }

    /// `[rows, columns]` f32 input times each matrix's transposed weights: `[rows, matrix
    /// rows]` each, with AVX-512 VNNI's block instruction or without it (the same integers, so
    /// the same results). The input is quantized once; the row groups of all the matrices are
    /// split across the threads in one pass.
    fn matmul_all(matrices: &[&Self], input: &[f32], rows: usize, vnni: bool) -> Vec<Vec<f32>> {
        if rows == 0 {
            return vec![Vec::new(); matrices.len()];
        }
        let quantized: Vec<Q8_1Block> = input.chunks_exact(BLOCK).map(quantize_q8_1).collect();
        // Computed as [group][input row][row of the group], so each task writes one contiguous slab.
        let mut grouped: Vec<Vec<f32>> = matrices.iter().map(|m| vec![0.0f32; m.groups() * GROUP * rows]).collect();
        let tasks: Vec<(&Self, usize, &mut [f32])> = matrices
            .iter()
            .zip(&mut grouped)
            .flat_map(|(&matrix, out)| {
                let slabs = out.chunks_mut(GROUPS_PER_TASK * GROUP * rows).enumerate();
                slabs.map(move |(task, out)| (matrix, task * GROUPS_PER_TASK, out))
            })
            .collect();
        tasks
            .into_par_iter()
            .for_each(|(matrix, first_group, out)| matrix.run_task(vnni, first_group, &quantized, out, rows));
        let ungrouped = matrices.iter().zip(grouped).map(|(matrix, grouped)| {
            let mut output = vec![0.0f32; rows * matrix.rows];
            for (group, values) in grouped.chunks_exact(GROUP * rows).enumerate() {
                let first = group * GROUP;
                for (input_row, lanes) in values.chunks_exact(GROUP).enumerate() {
                    let kept = (matrix.rows - first).min(GROUP);
                    output[input_row * matrix.rows + first..][..kept].copy_from_slice(&lanes[..kept]);
                }
            }
            output
        });
        ungrouped.collect()
    }

    /// One parallel task with AVX-512 VNNI's block instruction or without it.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")),
        allow(unused_variables)
    )]
    fn run_task(&self, vnni: bool, first_group: usize, quantized: &[Q8_1Block], out: &mut [f32], rows: usize) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        if vnni {
            assert!(lanes::has_vnni(), "the VNNI kernel runs only where the CPU has it; this is a bug");
            #[allow(unsafe_code)]
            // SAFETY: checked just above: the CPU has every feature `task_vnni` is compiled with.
            return unsafe { self.task_vnni(first_group, quantized, out, rows) };
        }
        self.task::<false>(first_group, quantized, out, rows)
    }

    /// [`Self::task`] compiled with AVX-512 VNNI: the whole loop lives in this function, which
    /// has the feature, so `vpdpbusd` is inlined into it whatever the optimizer decides about
    /// the callers (a closure entered through a feature-enabled wrapper was not always inlined
    /// into it, and a workspace build once called the block function once per pair, at a
    /// third of the speed).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn task_vnni(&self, first_group: usize, quantized: &[Q8_1Block], out: &mut [f32], rows: usize) {
        self.task::<true>(first_group, quantized, out, rows)
    }

    /// One parallel task: the row groups from `first_group` that `out` holds, each against the
    /// input rows in tiles of [`WIDE_TILE`] (with VNNI, whose AVX-512 encoding has 32 vector
    /// registers), then of [`INPUTS_TOGETHER`], then one at a time for the rest.
    #[inline(always)]
    fn task<const VNNI: bool>(&self, first_group: usize, quantized: &[Q8_1Block], out: &mut [f32], rows: usize) {
        for (g, out) in out.chunks_exact_mut(GROUP * rows).enumerate() {
            let group = first_group + g;
            let done = if VNNI { self.tiles::<WIDE_TILE, VNNI>(group, quantized, out, 0) } else { 0 };
            let done = self.tiles::<INPUTS_TOGETHER, VNNI>(group, quantized, out, done);
            self.tiles::<1, VNNI>(group, quantized, out, done);
        }
    }

    /// The group against the input rows from `first` in tiles of `M` while a whole tile is
    /// left, into `out` (`[input row][row of the group]`); returns the first row not done.
    #[inline(always)]
    fn tiles<const M: usize, const VNNI: bool>(
        &self,
        group: usize,
        quantized: &[Q8_1Block],
        out: &mut [f32],
        first: usize,
    ) -> usize {
        let blocks_per_row = self.columns / BLOCK;
        let rows = quantized.len() / blocks_per_row;
        let mut input = first;
        while input + M <= rows {
            let x_rows = std::array::from_fn(|m| &quantized[(input + m) * blocks_per_row..][..blocks_per_row]);
            out[input * GROUP..][..M * GROUP].copy_from_slice(self.tile::<M, VNNI>(group, x_rows).as_flattened());
            input += M;
        }
        input
    }
}

/// Eight f32 accumulators, one per row of a group, and the integer products of a block.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod lanes {
    use std::arch::x86_64::*;

    use super::{BLOCK, GROUP, Q8_1Block};

    #[derive(Clone, Copy)]
    pub struct Lanes(__m256);

    /// One block's exact integer products, one lane per row of the group.
    #[derive(Clone, Copy)]
    pub struct Sums(__m256i);

    // SAFETY (every `unsafe` block in this module): the module exists only when the whole build
    // targets AVX2 and FMA (the `cfg` above, set by `-C target-cpu=x86-64-v3` in
    // .cargo/config.toml), so every AVX2 instruction is available; the VNNI forms run only
    // inside `KernelMatrix::task_vnni`, which is entered only where `has_vnni` found the CPU has
    // AVX-512 VNNI and VL; loads and stores go through `bytemuck` on values of the vector's size.

    impl Lanes {
        pub fn zero() -> Self {
            Self(bytemuck::cast([0.0f32; GROUP]))
        }

        /// Adds `sums · scales · d` lane by lane (the product of the scales first).
        #[inline(always)]
        pub fn add_products(self, sums: Sums, scales: &[f32; GROUP], d: f32) -> Self {
            #[allow(unsafe_code)]
            unsafe {
                let scales = _mm256_mul_ps(bytemuck::cast(*scales), _mm256_set1_ps(d));
                Self(_mm256_fmadd_ps(_mm256_cvtepi32_ps(sums.0), scales, self.0))
            }
        }

        /// Adds `minimums · s` lane by lane.
        #[inline(always)]
        pub fn add_minimums(self, minimums: &[f32; GROUP], s: f32) -> Self {
            #[allow(unsafe_code)]
            unsafe {
                Self(_mm256_fmadd_ps(bytemuck::cast(*minimums), _mm256_set1_ps(s), self.0))
            }
        }

        pub fn to_array(self) -> [f32; GROUP] {
            bytemuck::cast(self.0)
        }
    }

    /// Whether this CPU has AVX-512 VNNI with 256-bit forms (VL), checked once.
    pub fn has_vnni() -> bool {
        static VNNI: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
            std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl")
        });
        *VNNI
    }

    /// Q4_1: each chunk's nibbles, masked and shifted, are the unsigned operand; the input's
    /// matching four values, broadcast, the signed one. With VNNI one `vpdpbusd` per chunk half
    /// and input; on AVX2 `vpmaddubsw` pairs summed as 16-bit integers over the block (at most
    /// 8 · 2 · 15 · 127 = 30,480, no saturation), then `vpmaddwd` into the lanes.
    #[inline(always)]
    pub fn q4_1_products<const VNNI: bool, const M: usize>(
        chunks: &[[u8; 4 * GROUP]; 4],
        x: [&Q8_1Block; M],
    ) -> [Sums; M] {
        #[allow(unsafe_code)]
        unsafe {
            let mask = _mm256_set1_epi8(0x0F);
            let mut sums = [_mm256_setzero_si256(); M];
            for (j, chunk) in chunks.iter().enumerate() {
                let packed: __m256i = bytemuck::cast(*chunk);
                let low = _mm256_and_si256(packed, mask);
                let high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask);
                for m in 0..M {
                    let (low_values, high_values) =
                        (_mm256_set1_epi32(x[m].words[j]), _mm256_set1_epi32(x[m].words[4 + j]));
                    sums[m] = match VNNI {
                        true => _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(sums[m], low, low_values), high, high_values),
                        false => _mm256_add_epi16(
                            sums[m],
                            _mm256_add_epi16(
                                _mm256_maddubs_epi16(low, low_values),
                                _mm256_maddubs_epi16(high, high_values),
                            ),
                        ),
                    };
                }
            }
            match VNNI {
                true => sums.map(Sums),
                false => sums.map(|pairs| Sums(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))),
            }
        }
    }

    /// Q8_0: with VNNI the input plus 128 (unsigned) times the signed weights, starting from
    /// `offsets` (`-128 · Σ w`); on AVX2 the weights' magnitudes times the values with the
    /// weights' signs (`|w| · sign(w) x = w x`; at most 128 · 127 · 2 per pair). The same
    /// integers.
    #[inline(always)]
    pub fn q8_0_products<const VNNI: bool, const M: usize>(
        chunks: &[[i8; 4 * GROUP]; BLOCK / 4],
        offsets: &[i32; GROUP],
        x: [&Q8_1Block; M],
    ) -> [Sums; M] {
        #[allow(unsafe_code)]
        unsafe {
            let start = match VNNI {
                true => bytemuck::cast(*offsets),
                false => _mm256_setzero_si256(),
            };
            let mut sums = [start; M];
            for (j, chunk) in chunks.iter().enumerate() {
                let weights: __m256i = bytemuck::cast(*chunk);
                let magnitudes = _mm256_sign_epi8(weights, weights);
                for m in 0..M {
                    sums[m] = match VNNI {
                        true => _mm256_dpbusd_epi32(sums[m], _mm256_set1_epi32(x[m].shifted[j]), weights),
                        false => {
                            let values = _mm256_sign_epi8(_mm256_set1_epi32(x[m].words[j]), weights);
                            let pairs = _mm256_maddubs_epi16(magnitudes, values);
                            _mm256_add_epi32(sums[m], _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
                        }
                    };
                }
            }
            sums.map(Sums)
        }
    }
}

/// The portable form of the same arithmetic, in the same order; the compiler vectorizes it.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod lanes {
    use super::{BLOCK, GROUP, Q8_1Block};

    #[derive(Clone, Copy)]
    pub struct Lanes([f32; GROUP]);

    /// One block's exact integer products, one lane per row of the group.
    #[derive(Clone, Copy)]
    pub struct Sums([i32; GROUP]);

    impl Lanes {
        pub fn zero() -> Self {
            Self([0.0; GROUP])
        }

        pub fn add_products(mut self, sums: Sums, scales: &[f32; GROUP], d: f32) -> Self {
            for ((lane, &sum), &scale) in self.0.iter_mut().zip(&sums.0).zip(scales) {
                *lane = (sum as f32).mul_add(scale * d, *lane);
            }
            self
        }

        pub fn add_minimums(mut self, minimums: &[f32; GROUP], s: f32) -> Self {
            for (lane, &minimum) in self.0.iter_mut().zip(minimums) {
                *lane = minimum.mul_add(s, *lane);
            }
            self
        }

        pub fn to_array(self) -> [f32; GROUP] {
            self.0
        }
    }

    /// No VNNI form without the AVX2 build.
    pub fn has_vnni() -> bool {
        false
    }

    fn values(x: &Q8_1Block) -> [i8; BLOCK] {
        bytemuck::cast(x.words)
    }

    pub fn q4_1_products<const VNNI: bool, const M: usize>(
        chunks: &[[u8; 4 * GROUP]; 4],
        x: [&Q8_1Block; M],
    ) -> [Sums; M] {
        x.map(|x| {
            let values = values(x);
            Sums(std::array::from_fn(|row| {
                let mut sum = 0i32;
                for (j, chunk) in chunks.iter().enumerate() {
                    for (k, &byte) in chunk[4 * row..][..4].iter().enumerate() {
                        sum += i32::from(byte & 0x0F) * i32::from(values[4 * j + k]);
                        sum += i32::from(byte >> 4) * i32::from(values[16 + 4 * j + k]);
                    }
                }
                sum
            }))
        })
    }

    pub fn q8_0_products<const VNNI: bool, const M: usize>(
        chunks: &[[i8; 4 * GROUP]; BLOCK / 4],
        offsets: &[i32; GROUP],
        x: [&Q8_1Block; M],
    ) -> [Sums; M] {
        x.map(|x| {
            let shifted: [u8; BLOCK] = bytemuck::cast(x.shifted);
            Sums(std::array::from_fn(|row| {
                let mut sum = offsets[row];
                for (j, chunk) in chunks.iter().enumerate() {
                    for (k, &weight) in chunk[4 * row..][..4].iter().enumerate() {
                        sum += i32::from(weight) * i32::from(shifted[4 * j + k]);
                    }
                }
                sum
            }))
        })
    }
}

/// ggml's `quantize_row_q8_1` for one block, with its rounding: the scale and the sum go through
/// f16 exactly as the stored format does. Written over fixed-size arrays, with the maximum in
/// eight lanes, so the compiler vectorizes it (a decode step quantizes every projection's input).
fn quantize_q8_1(values: &[f32]) -> Q8_1Block {
    let values: &[f32; BLOCK] = values.try_into().expect("input rows come in blocks of 32; this is a bug");
    // `a > max`, not `f32::max`: one `vmaxps` per lane, no NaN blending (a NaN is skipped either way).
    let larger = |max: f32, a: f32| if a > max { a } else { max };
    let mut lanes = [0.0f32; 8];
    for chunk in values.chunks_exact(8) {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = larger(*lane, v.abs());
        }
    }
    let amax = lanes.into_iter().fold(0.0f32, larger);
    let d = amax / 127.0;
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (mut qs, mut shifted) = ([0i8; BLOCK], [0u8; BLOCK]);
    for ((q, shifted), &v) in qs.iter_mut().zip(&mut shifted).zip(values) {
        // An integer in [-127, 127], read from the bits of itself plus 1.5 · 2²³ (exact there),
        // which the compiler vectorizes; a float-to-integer cast it does value by value. NaN: 0.
        let rounded = (v * inverse).round();
        let bits = (rounded + 12_582_912.0).to_bits() as i32 - 0x4B40_0000;
        *q = if rounded.is_nan() { 0 } else { bits as i8 };
        *shifted = (*q as u8) ^ 0x80;
    }
    let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
    let d = f16::from_f32(d);
    let s = f16::from_f32(f16::from_f32(sum as f32).to_f32() * d.to_f32());
    // An f16 scale times at most 32 · 127 is exact in f32.
    let exact = d.to_f32() * sum as f32;
    Q8_1Block { d: d.to_f32(), s: s.to_f32(), sum: exact, words: bytemuck::cast(qs), shifted: bytemuck::cast(shifted) }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Random-ish values with a spread like activations and weights.
    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// Ours against candle's `QMatMul` on the same quantized weights; then each row alone, and
    /// the AVX2 and VNNI forms, bit for bit.
    fn agrees_with_candle<B: WeightBlock>(matrix: impl Fn(&QLinear) -> Option<&KernelMatrix<B>>) {
        let (out, width) = (37, 128);
        let weights = Tensor::from_vec(values(out * width, 7), (out, width), &Device::Cpu).unwrap();
        let quantize = || QTensor::quantize(&weights, B::DTYPE).unwrap();
        let ours = QLinear::new(quantize()).unwrap();
        let kernel = matrix(&ours).expect("our kernel runs this type");
        let candle = QMatMul::from_qtensor(quantize()).unwrap();
        // Thirteen rows: tiles of every size (8 + 4 + 1 with VNNI, 4 + 4 + 4 + 1 without).
        let x = Tensor::from_vec(values(13 * width, 3), (13, width), &Device::Cpu).unwrap();
        let batched = ours.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        // The same integer products; only the order of the float sums differs from candle's.
        for (got, expected) in
            batched.iter().flatten().zip(candle.forward(&x).unwrap().to_vec2::<f32>().unwrap().iter().flatten())
        {
            assert!((got - expected).abs() <= 1e-4 * expected.abs().max(1.0), "{got} vs {expected}");
        }
        for (row, expected) in batched.iter().enumerate() {
            let alone = ours.forward(&x.narrow(0, row, 1).unwrap()).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(&alone[0], expected, "row {row} alone and in a batch of 13");
        }
        // AVX-512 VNNI, where the CPU has it, gives the AVX2 path's results bit for bit.
        let input = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let [avx2] = KernelMatrix::matmul_all(&[kernel], &input, 13, false).try_into().unwrap();
        assert_eq!(avx2, batched.concat());
        if lanes::has_vnni() {
            assert_eq!(KernelMatrix::matmul_all(&[kernel], &input, 13, true), [avx2]);
        }
    }

    #[test]
    fn the_q4_1_kernel_agrees_with_candle_and_a_row_ignores_its_batch() {
        agrees_with_candle::<Q4_1Group>(|linear| match linear {
            QLinear::Q4_1(matrix) => Some(matrix),
            _ => None,
        });
    }

    #[test]
    fn the_q4_0_kernel_agrees_with_candle_and_a_row_ignores_its_batch() {
        agrees_with_candle::<Q4_0Group>(|linear| match linear {
            QLinear::Q4_0(matrix) => Some(matrix),
            _ => None,
        });
    }

    #[test]
    fn the_q8_0_kernel_agrees_with_candle_and_a_row_ignores_its_batch() {
        agrees_with_candle::<Q8_0Group>(|linear| match linear {
            QLinear::Q8_0(matrix) => Some(matrix),
            _ => None,
        });
    }

    #[test]
    fn layers_over_one_input_in_one_pass_give_what_each_gives_alone() {
        let linear = |out: usize, seed, dtype| {
            let weights = Tensor::from_vec(values(out * 64, seed), (out, 64), &Device::Cpu).unwrap();
            QLinear::new(QTensor::quantize(&weights, dtype).unwrap()).unwrap()
        };
        let input = values(5 * 64, 3);
        let x = Tensor::from_slice(&input, (5, 64), &Device::Cpu).unwrap();
        let alone = |layer: &QLinear| layer.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let all = |layers| QLinear::forward_all(layers, &input, 5, &Device::Cpu).unwrap();
        let (q, k, v) =
            (linear(40, 1, GgmlDType::Q4_1), linear(24, 2, GgmlDType::Q4_1), linear(24, 4, GgmlDType::Q4_1));
        assert_eq!(all([&q, &k, &v]), [alone(&q), alone(&k), alone(&v)]);
        // Mixed types go one by one, with the same results.
        let (eight, zero) = (linear(16, 5, GgmlDType::Q8_0), linear(32, 6, GgmlDType::Q5_0));
        assert_eq!(all([&q, &eight, &zero]), [alone(&q), alone(&eight), alone(&zero)]);
    }

    #[test]
    fn input_blocks_round_half_away_from_zero_and_read_nan_as_zero() {
        for seed in 0..50 {
            let mut block = values(BLOCK, seed);
            block[3] = 63.5 / 127.0; // exactly half-way once scaled (the maximum is 1)
            block[5] = 1.0;
            block[7] = f32::NAN;
            let quantized = quantize_q8_1(&block);
            let inverse = 1.0 / (1.0f32 / 127.0);
            let expected: [i8; BLOCK] = std::array::from_fn(|i| (block[i] * inverse).round() as i8);
            assert_eq!(bytemuck::cast::<_, [i8; BLOCK]>(quantized.words), expected);
            assert_eq!(expected[7], 0);
        }
    }

    #[test]
    fn other_types_use_candle() {
        let weights = Tensor::from_vec(values(32 * 256, 1), (32, 256), &Device::Cpu).unwrap();
        let quantized = QTensor::quantize(&weights, GgmlDType::Q4K).unwrap();
        assert!(matches!(QLinear::new(quantized).unwrap(), QLinear::Other(_)));
    }

    #[test]
    fn q5_weights_run_on_the_q8_0_kernel_and_give_what_candle_gives_on_them() {
        let (out, width) = (24, 128);
        let weights = Tensor::from_vec(values(out * width, 5), (out, width), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(values(3 * width, 9), (3, width), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q5_0, GgmlDType::Q5_1] {
            let quantize = || QTensor::quantize(&weights, dtype).unwrap();
            let ours = QLinear::new(quantize()).unwrap();
            assert!(matches!(ours, QLinear::Q8_0(_)), "{dtype:?} on the Q8_0 kernel");
            let candle = QMatMul::from_qtensor(quantize()).unwrap().forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let got = ours.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            // Against the exact products of the Q5 values: both quantize the input to 8 bits, and
            // ours moves each weight by at most half a Q8_0 step too; so each is off by a small
            // share of the sum of the products' magnitudes.
            let w = quantize().dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
            let input = x.to_vec2::<f32>().unwrap();
            for (row, x_row) in input.iter().enumerate() {
                for (column, w_row) in w.iter().enumerate() {
                    let exact: f32 = w_row.iter().zip(x_row).map(|(w, x)| w * x).sum();
                    let scale: f32 = w_row.iter().zip(x_row).map(|(w, x)| (w * x).abs()).sum();
                    let (ours, theirs) = (got[row][column], candle[row][column]);
                    assert!((ours - exact).abs() <= 0.01 * scale, "{dtype:?}: ours {ours}, exact {exact}");
                    assert!((theirs - exact).abs() <= 0.01 * scale, "{dtype:?}: candle {theirs}, exact {exact}");
                }
            }
        }
    }
}
