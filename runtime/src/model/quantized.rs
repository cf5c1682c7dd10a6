//! Linear layers over GGUF weights (or dense ones). Q4_1 and Q8_0 on the CPU run on our own
//! kernel; every other type, and every type on a GPU, on candle's `QMatMul`.
//!
//! Why a kernel of our own: candle 0.11's Q4_1 × Q8_1 dot product is scalar, and its Q8_0 one
//! computes each (input row, weight row) pair on its own, so decoding several sequences together
//! costs as much as decoding them one after another (SmolLM2's tied output layer is Q8_0: 15% of
//! a decode profile went to candle's per-pair Q8_0 dot). [`KernelMatrix`] walks each weight row
//! once per step and uses it for every input row while it is in L1, in tiles of four weight rows
//! by two input rows so each block is unpacked once for both (one `vpdpbusd` per block and pair
//! where the CPU has AVX-512 VNNI, checked at run time; `vpmaddubsw` and `vpmaddwd` on AVX2; a
//! vectorized portable loop elsewhere), and splits the weight rows across threads. Layers that
//! read the same input ([`QLinear::forward_all`]: a block's q/k/v, its gate and up) quantize it
//! once and share one parallel pass, so a decode step waits for the threads four times per
//! block instead of seven. The
//! arithmetic is ggml's: input rows quantized to Q8_1 per 32-value block, exact integer dot
//! products, then `Σ sum · d_w · d_x (+ Σ m_w · s_x for Q4_1's minimums)`; Q8_0's signed weights
//! go through the unsigned × signed instructions as magnitudes, their signs moved to the values.
//! Like ggml's own AVX2 path (and unlike candle's scalar one) the products accumulate in eight
//! vector lanes summed once per row, so results differ from candle's by float rounding only;
//! every (weight row, input row) result is computed the same way whatever else is in the batch,
//! which keeps batched decoding bit-identical to decoding alone.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use half::f16;
use lanes::Lanes;
use rayon::prelude::*;

/// Values per quantization block.
const BLOCK: usize = 32;
/// Weight rows per parallel work item.
const ROWS_PER_TASK: usize = 16;
/// Weight rows computed together so their dependent float chains overlap.
const INTERLEAVE: usize = 4;
/// Input rows computed together, so each weight block is unpacked once for all of them (4 × 2
/// accumulators, the values and a weight block fit AVX2's 16 vector registers).
const INPUTS_TOGETHER: usize = 2;

/// A linear layer `y = x · Wᵀ` over quantized weights `[out, in]`.
#[derive(Debug)]
pub enum QLinear {
    Q4_1(KernelMatrix<Q4_1Block>),
    Q8_0(KernelMatrix<Q8_0Block>),
    Other(QMatMul),
}

impl QLinear {
    /// Chooses the implementation for `weights`' type and device: our kernel for Q4_1 and Q8_0
    /// on the CPU, candle's everywhere else (its CUDA kernels on a GPU).
    pub fn new(weights: QTensor) -> candle_core::Result<Self> {
        match weights.dtype() {
            GgmlDType::Q4_1 if weights.device().is_cpu() => Ok(Self::Q4_1(KernelMatrix::new(&weights)?)),
            GgmlDType::Q8_0 if weights.device().is_cpu() => Ok(Self::Q8_0(KernelMatrix::new(&weights)?)),
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
            Self::Q4_1(matrix) => Ok((matrix.rows, matrix.columns)),
            Self::Q8_0(matrix) => Ok((matrix.rows, matrix.columns)),
            Self::Other(QMatMul::QTensor(weights)) => weights.shape().dims2(),
            Self::Other(QMatMul::Tensor(weights) | QMatMul::TensorF16(weights)) => weights.dims2(),
        }
    }

    /// `x` is `[rows, in]`; the result `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Q4_1(matrix) => matrix.forward(x),
            Self::Q8_0(matrix) => matrix.forward(x),
            Self::Other(matmul) => matmul.forward(x),
        }
    }

    /// `x` (`[rows, in]`) through several layers that read it, each result `[rows, out]`
    /// row-major and bit for bit what [`Self::forward`] gives. Layers all on our kernel with one
    /// block type run in one parallel pass (the input quantized once, one wait for the threads
    /// instead of one per layer: a decode step's projections are small); others one by one.
    pub fn forward_all<const N: usize>(layers: [&QLinear; N], x: &Tensor) -> candle_core::Result<[Vec<f32>; N]> {
        let results = if let Some(matrices) = kernels(&layers, |l| if let Self::Q4_1(m) = l { Some(m) } else { None }) {
            KernelMatrix::forward_all(&matrices, x)?
        } else if let Some(matrices) = kernels(&layers, |l| if let Self::Q8_0(m) = l { Some(m) } else { None }) {
            KernelMatrix::forward_all(&matrices, x)?
        } else {
            let each = layers.iter().map(|layer| layer.forward(x)?.flatten_all()?.to_vec1::<f32>());
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

/// A GGUF weight format the kernel runs: how a block is stored, and its products with an
/// input block.
pub trait WeightBlock: Copy + std::fmt::Debug + Send + Sync {
    const DTYPE: GgmlDType;
    /// Bytes of one block in GGUF.
    const BYTES: usize;
    /// Whether blocks carry a minimum (`value = d · q + m`), which adds `m · s_x` per block.
    const HAS_MINIMUM: bool;
    /// The block's weights unpacked for the block instruction, once for every input row.
    type Operand: Copy;
    /// The block at `bytes`: its scale, its minimum (0 without one) and its values.
    fn parse(bytes: &[u8]) -> (f32, f32, Self);
    fn operand(&self) -> Self::Operand;
    /// Adds the block's integer products with `values`, times `scale`, to `lanes`.
    fn add_to<const VNNI: bool>(weights: Self::Operand, lanes: Lanes, values: &[i8; BLOCK], scale: f32) -> Lanes;
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// Q4_1's 16 bytes of nibbles: value `j` in the low nibble of byte `j`, value `j + 16` in the
/// high one; GGUF stores `d` (f16), `m` (f16), then the nibbles.
#[derive(Clone, Copy, Debug)]
pub struct Q4_1Block([u8; 16]);

impl WeightBlock for Q4_1Block {
    const DTYPE: GgmlDType = GgmlDType::Q4_1;
    const BYTES: usize = 20;
    const HAS_MINIMUM: bool = true;
    type Operand = lanes::Nibbles;

    fn parse(bytes: &[u8]) -> (f32, f32, Self) {
        let nibbles = bytes[4..20].try_into().expect("a Q4_1 block holds 16 bytes of nibbles; this is a bug");
        (half(&bytes[0..2]), half(&bytes[2..4]), Self(nibbles))
    }

    #[inline(always)]
    fn operand(&self) -> lanes::Nibbles {
        lanes::Nibbles::unpack(&self.0)
    }

    #[inline(always)]
    fn add_to<const VNNI: bool>(weights: lanes::Nibbles, lanes: Lanes, values: &[i8; BLOCK], scale: f32) -> Lanes {
        lanes.add_q4_1::<VNNI>(weights, values, scale)
    }
}

/// Q8_0's 32 signed values; GGUF stores `d` (f16), then the values.
#[derive(Clone, Copy, Debug)]
pub struct Q8_0Block([i8; BLOCK]);

impl WeightBlock for Q8_0Block {
    const DTYPE: GgmlDType = GgmlDType::Q8_0;
    const BYTES: usize = 34;
    const HAS_MINIMUM: bool = false;
    type Operand = lanes::Signed;

    fn parse(bytes: &[u8]) -> (f32, f32, Self) {
        let values: [u8; BLOCK] = bytes[2..34].try_into().expect("a Q8_0 block holds 32 values; this is a bug");
        (half(&bytes[0..2]), 0.0, Self(bytemuck::cast(values)))
    }

    #[inline(always)]
    fn operand(&self) -> lanes::Signed {
        lanes::Signed::unpack(&self.0)
    }

    #[inline(always)]
    fn add_to<const VNNI: bool>(weights: lanes::Signed, lanes: Lanes, values: &[i8; BLOCK], scale: f32) -> Lanes {
        lanes.add_q8_0::<VNNI>(weights, values, scale)
    }
}

/// Weights unpacked for the kernel: per block its scale (and minimum, for formats with one) as
/// f32 and its values.
#[derive(Debug)]
pub struct KernelMatrix<B: WeightBlock> {
    rows: usize,
    columns: usize,
    scales: Vec<f32>,
    minimums: Vec<f32>,
    blocks: Vec<B>,
}

/// One input row block quantized to Q8_1: scale, scale × sum of the values, 32 signed values.
#[derive(Clone, Copy, Debug)]
struct Q8_1Block {
    d: f32,
    s: f32,
    qs: [i8; BLOCK],
}

impl<B: WeightBlock> KernelMatrix<B> {
    fn new(weights: &QTensor) -> candle_core::Result<Self> {
        let kind = B::DTYPE;
        let (rows, columns) = weights.shape().dims2()?;
        if columns % BLOCK != 0 {
            candle_core::bail!("{kind:?} weights need a multiple of {BLOCK} columns, got {columns}");
        }
        let data = weights.data()?;
        let blocks = rows * columns / BLOCK;
        if data.len() != blocks * B::BYTES {
            candle_core::bail!("{kind:?} weights of {rows}x{columns} hold {} bytes", data.len());
        }
        let mut matrix = Self {
            rows,
            columns,
            scales: Vec::with_capacity(blocks),
            minimums: Vec::with_capacity(if B::HAS_MINIMUM { blocks } else { 0 }),
            blocks: Vec::with_capacity(blocks),
        };
        for bytes in data.chunks_exact(B::BYTES) {
            let (scale, minimum, block) = B::parse(bytes);
            matrix.scales.push(scale);
            if B::HAS_MINIMUM {
                matrix.minimums.push(minimum);
            }
            matrix.blocks.push(block);
        }
        Ok(matrix)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [output] = Self::forward_all(&[self], x)?.try_into().unwrap_or_default();
        Tensor::from_vec(output, (x.dim(0)?, self.rows), x.device())
    }

    /// `x` through each of `matrices`, `[rows, matrix rows]` each, in one parallel pass.
    fn forward_all(matrices: &[&Self], x: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        let (rows, columns) = x.dims2()?;
        if let Some(matrix) = matrices.iter().find(|m| m.columns != columns) {
            candle_core::bail!("input of width {columns} for {:?} weights of width {}", B::DTYPE, matrix.columns);
        }
        let input = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self::matmul_all(matrices, &input, rows, lanes::has_vnni()))
    }

    /// `N` consecutive weight rows from `first` against every quantized input row, written to
    /// `out` as `[N][input rows]`, in tiles of [`INPUTS_TOGETHER`] input rows (then one at a
    /// time for the rest). `VNNI` picks the block instruction (see [`lanes`]); always inlined,
    /// so the choice is made once per task.
    #[inline(always)]
    fn dot_rows<const N: usize, const VNNI: bool>(&self, first: usize, quantized: &[Q8_1Block], out: &mut [f32]) {
        let blocks_per_row = self.columns / BLOCK;
        let inputs = quantized.len() / blocks_per_row;
        let tiles = quantized.chunks_exact(INPUTS_TOGETHER * blocks_per_row);
        let rest = tiles.remainder();
        let mut store = |input: usize, sums: &[[f32; N]]| {
            for (m, sums) in sums.iter().enumerate() {
                for (r, &sum) in sums.iter().enumerate() {
                    out[r * inputs + input + m] = sum;
                }
            }
        };
        for (tile, x) in tiles.enumerate() {
            let rows = std::array::from_fn(|m| &x[m * blocks_per_row..][..blocks_per_row]);
            store(tile * INPUTS_TOGETHER, &self.dot_tile::<N, INPUTS_TOGETHER, VNNI>(first, rows));
        }
        for (i, x) in rest.chunks_exact(blocks_per_row).enumerate() {
            store(inputs - rest.len() / blocks_per_row + i, &self.dot_tile::<N, 1, VNNI>(first, [x]));
        }
    }

    /// `N` weight rows from `first` against `M` input rows: `[input][weight row]`. Each block of
    /// a weight row is unpacked once for the `M` inputs. Each (weight row, input row) pair
    /// accumulates in its own vector lanes plus a scalar chain for the minimum terms, summed
    /// once at the end, the same operations in the same order whatever the tile, so a row's
    /// result is the same in any batch; the `N × M` chains are independent, and the CPU
    /// overlaps them.
    #[inline(always)]
    fn dot_tile<const N: usize, const M: usize, const VNNI: bool>(
        &self,
        first: usize,
        x_rows: [&[Q8_1Block]; M],
    ) -> [[f32; N]; M] {
        let blocks_per_row = self.columns / BLOCK;
        let row = |r: usize| (first + r) * blocks_per_row..(first + r + 1) * blocks_per_row;
        let blocks: [&[B]; N] = std::array::from_fn(|r| &self.blocks[row(r)]);
        let scales: [&[f32]; N] = std::array::from_fn(|r| &self.scales[row(r)]);
        let minimums: [&[f32]; N] = std::array::from_fn(|r| if B::HAS_MINIMUM { &self.minimums[row(r)] } else { &[] });
        let mut products = [[Lanes::zero(); M]; N];
        let mut minimum_sums = [[0.0f32; M]; N];
        for b in 0..blocks_per_row {
            for r in 0..N {
                let weights = blocks[r][b].operand();
                for m in 0..M {
                    let x = &x_rows[m][b];
                    products[r][m] = B::add_to::<VNNI>(weights, products[r][m], &x.qs, scales[r][b] * x.d);
                    if B::HAS_MINIMUM {
                        minimum_sums[r][m] = minimums[r][b].mul_add(x.s, minimum_sums[r][m]);
                    }
                }
            }
        }
        std::array::from_fn(|m| std::array::from_fn(|r| products[r][m].sum() + minimum_sums[r][m]))
    }

    /// `[rows, columns]` f32 input times each matrix's transposed weights: `[rows, matrix
    /// rows]` each, with AVX-512 VNNI's block instruction or without it (the same integers, so
    /// the same results). The input is quantized once; the weight rows of all the matrices are
    /// split across the threads in one pass.
    fn matmul_all(matrices: &[&Self], input: &[f32], rows: usize, vnni: bool) -> Vec<Vec<f32>> {
        if rows == 0 {
            return vec![Vec::new(); matrices.len()];
        }
        let quantized: Vec<Q8_1Block> = input.chunks_exact(BLOCK).map(quantize_q8_1).collect();
        // Computed transposed ([weight row][input row]) so each task writes one contiguous slab.
        let mut transposed: Vec<Vec<f32>> = matrices.iter().map(|m| vec![0.0f32; m.rows * rows]).collect();
        let tasks: Vec<(&Self, usize, &mut [f32])> = matrices
            .iter()
            .zip(&mut transposed)
            .flat_map(|(&matrix, out)| {
                let slabs = out.chunks_mut(ROWS_PER_TASK * rows).enumerate();
                slabs.map(move |(task, out)| (matrix, task * ROWS_PER_TASK, out))
            })
            .collect();
        tasks
            .into_par_iter()
            .for_each(|(matrix, first_row, out)| matrix.run_task(vnni, first_row, &quantized, out, rows));
        let untransposed = matrices.iter().zip(transposed).map(|(matrix, transposed)| {
            let mut output = vec![0.0f32; rows * matrix.rows];
            for (row, values) in transposed.chunks_exact(rows).enumerate() {
                for (input_row, &value) in values.iter().enumerate() {
                    output[input_row * matrix.rows + row] = value;
                }
            }
            output
        });
        untransposed.collect()
    }

    /// One parallel task with AVX-512 VNNI's block instruction or without it.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")),
        allow(unused_variables)
    )]
    fn run_task(&self, vnni: bool, first_row: usize, quantized: &[Q8_1Block], out: &mut [f32], rows: usize) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        if vnni {
            assert!(lanes::has_vnni(), "the VNNI kernel runs only where the CPU has it; this is a bug");
            #[allow(unsafe_code)]
            // SAFETY: checked just above: the CPU has every feature `task_vnni` is compiled with.
            return unsafe { self.task_vnni(first_row, quantized, out, rows) };
        }
        self.task::<false>(first_row, quantized, out, rows)
    }

    /// [`Self::task`] compiled with AVX-512 VNNI: the whole loop lives in this function, which
    /// has the feature, so `vpdpbusd` is inlined into it whatever the optimizer decides about
    /// the callers (a closure entered through a feature-enabled wrapper was not always inlined
    /// into it, and a workspace build once called the block function once per pair, at a
    /// third of the speed).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn task_vnni(&self, first_row: usize, quantized: &[Q8_1Block], out: &mut [f32], rows: usize) {
        self.task::<true>(first_row, quantized, out, rows)
    }

    /// One parallel task: the weight rows from `first_row` that `out` holds, in groups of
    /// [`INTERLEAVE`].
    #[inline(always)]
    fn task<const VNNI: bool>(&self, first_row: usize, quantized: &[Q8_1Block], out: &mut [f32], rows: usize) {
        for (group, out) in out.chunks_mut(INTERLEAVE * rows).enumerate() {
            let row = first_row + group * INTERLEAVE;
            match out.len() / rows {
                INTERLEAVE => self.dot_rows::<INTERLEAVE, VNNI>(row, quantized, out),
                tail => {
                    (0..tail).for_each(|i| self.dot_rows::<1, VNNI>(row + i, quantized, &mut out[i * rows..][..rows]))
                }
            }
        }
    }
}

/// Eight f32 partial sums of one (weight row, input row) product. Each block adds its exact
/// integer products, summed in eight groups of four (weights `4i..4i + 4` of the block's 32, for
/// Q4_1 in nibble order: the low nibbles, then the high ones), times the block's combined scale.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod lanes {
    use std::arch::x86_64::*;

    use super::BLOCK;

    #[derive(Clone, Copy)]
    pub struct Lanes(__m256);

    impl Lanes {
        pub fn zero() -> Self {
            Self(bytemuck::cast([0.0f32; 8]))
        }

        /// Adds a Q4_1 block: its nibbles are the unsigned operand as they are.
        #[inline(always)]
        pub fn add_q4_1<const VNNI: bool>(self, weights: Nibbles, values: &[i8; BLOCK], scale: f32) -> Self {
            self.add::<VNNI>((weights.0, load(values)), scale)
        }

        /// Adds a Q8_0 block: the weights' magnitudes are the unsigned operand, their signs
        /// move to the values (`|w| · sign(w) x = w x`; at most 128 · 127 · 2 per pair).
        #[inline(always)]
        pub fn add_q8_0<const VNNI: bool>(self, weights: Signed, values: &[i8; BLOCK], scale: f32) -> Self {
            #[allow(unsafe_code)]
            // SAFETY: the whole build targets AVX2 (see `Lanes::add`).
            let values = unsafe { _mm256_sign_epi8(load(values), weights.signs) };
            self.add::<VNNI>((weights.magnitudes, values), scale)
        }

        /// Adds one block's unsigned × signed products: with `vpdpbusd` when `VNNI` (inlined
        /// only into `KernelMatrix::task_vnni`), else with `vpmaddubsw` and `vpmaddwd`; the
        /// same eight integer groups either way.
        #[inline(always)]
        fn add<const VNNI: bool>(self, (weights, values): (__m256i, __m256i), scale: f32) -> Self {
            #[allow(unsafe_code)]
            // SAFETY: this module exists only when the whole build targets AVX2 and FMA (the `cfg`
            // above, set by `-C target-cpu=x86-64-v3` in .cargo/config.toml), so every AVX2
            // instruction is available; the VNNI form runs only inside `task_vnni`, which is
            // entered only where `has_vnni` found the CPU has AVX-512 VNNI and VL.
            unsafe {
                Self(match VNNI {
                    true => groups_vnni(self.0, weights, values, scale),
                    false => groups(self.0, weights, values, scale),
                })
            }
        }

        pub fn sum(self) -> f32 {
            super::pairwise_sum(bytemuck::cast(self.0))
        }
    }

    /// Whether this CPU has AVX-512 VNNI with 256-bit forms (VL), checked once.
    pub fn has_vnni() -> bool {
        static VNNI: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
            std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl")
        });
        *VNNI
    }

    /// A Q4_1 block's 32 unsigned weights (at most 15), in nibble order.
    #[derive(Clone, Copy)]
    pub struct Nibbles(__m256i);

    impl Nibbles {
        #[inline(always)]
        pub fn unpack(nibbles: &[u8; 16]) -> Self {
            #[allow(unsafe_code)]
            // SAFETY: the whole build targets AVX2 (see `Lanes::add`).
            unsafe {
                let packed: __m128i = bytemuck::cast(*nibbles);
                let mask = _mm_set1_epi8(0x0F);
                let low = _mm_and_si128(packed, mask);
                let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
                Self(_mm256_set_m128i(high, low))
            }
        }
    }

    /// A Q8_0 block's weight magnitudes, and the weights whose signs the values take.
    #[derive(Clone, Copy)]
    pub struct Signed {
        magnitudes: __m256i,
        signs: __m256i,
    }

    impl Signed {
        #[inline(always)]
        pub fn unpack(weights: &[i8; BLOCK]) -> Self {
            let signs = load(weights);
            #[allow(unsafe_code)]
            // SAFETY: the whole build targets AVX2 (see `Lanes::add`).
            let magnitudes = unsafe { _mm256_sign_epi8(signs, signs) };
            Self { magnitudes, signs }
        }
    }

    #[inline(always)]
    fn load(values: &[i8; BLOCK]) -> __m256i {
        bytemuck::cast(*values)
    }

    /// `vpmaddubsw` multiplies the 32 unsigned weights by the signed values with pairwise sums
    /// (small enough that nothing saturates, see the callers); `vpmaddwd` sums pairs again into
    /// the eight groups, which are scaled into the accumulator.
    #[target_feature(enable = "avx2,fma")]
    fn groups(acc: __m256, weights: __m256i, values: __m256i, scale: f32) -> __m256 {
        let pairs = _mm256_maddubs_epi16(weights, values);
        let groups = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(groups), _mm256_set1_ps(scale), acc)
    }

    /// The same eight groups in one `vpdpbusd`, which sums four u8 × i8 products per lane.
    /// Always inlined, into `task_vnni`, which has the feature; its caller must be there.
    #[inline(always)]
    fn groups_vnni(acc: __m256, weights: __m256i, values: __m256i, scale: f32) -> __m256 {
        #[allow(unsafe_code)]
        // SAFETY: reached only from `KernelMatrix::task_vnni` (see `Lanes::add`), entered only
        // where the CPU has AVX-512 VNNI and VL.
        unsafe {
            let groups = _mm256_dpbusd_epi32(_mm256_setzero_si256(), weights, values);
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(groups), _mm256_set1_ps(scale), acc)
        }
    }
}

/// The portable form of the same arithmetic, in the same order; the compiler vectorizes it.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod lanes {
    use super::BLOCK;

    #[derive(Clone, Copy)]
    pub struct Lanes([f32; 8]);

    impl Lanes {
        pub fn zero() -> Self {
            Self([0.0; 8])
        }

        pub fn add_q4_1<const VNNI: bool>(self, weights: Nibbles, values: &[i8; BLOCK], scale: f32) -> Self {
            self.add(&weights.0, values, scale)
        }

        pub fn add_q8_0<const VNNI: bool>(self, weights: Signed, values: &[i8; BLOCK], scale: f32) -> Self {
            self.add(&weights.0, values, scale)
        }

        fn add(mut self, weights: &[i8; BLOCK], values: &[i8; BLOCK], scale: f32) -> Self {
            for (lane, (w, x)) in self.0.iter_mut().zip(weights.chunks_exact(4).zip(values.chunks_exact(4))) {
                let group: i32 = w.iter().zip(x).map(|(&p, &q)| i32::from(p) * i32::from(q)).sum();
                *lane = (group as f32).mul_add(scale, *lane);
            }
            self
        }

        pub fn sum(self) -> f32 {
            super::pairwise_sum(self.0)
        }
    }

    /// A Q4_1 block's 32 weights, in nibble order.
    #[derive(Clone, Copy)]
    pub struct Nibbles([i8; BLOCK]);

    impl Nibbles {
        pub fn unpack(nibbles: &[u8; 16]) -> Self {
            let mut weights = [0i8; BLOCK];
            for j in 0..16 {
                weights[j] = (nibbles[j] & 0x0F) as i8;
                weights[j + 16] = (nibbles[j] >> 4) as i8;
            }
            Self(weights)
        }
    }

    /// A Q8_0 block's 32 weights.
    #[derive(Clone, Copy)]
    pub struct Signed([i8; BLOCK]);

    impl Signed {
        pub fn unpack(weights: &[i8; BLOCK]) -> Self {
            Self(*weights)
        }
    }

    /// No VNNI form without the AVX2 build.
    pub fn has_vnni() -> bool {
        false
    }
}

/// The eight lanes summed as a tree, the order a vector horizontal sum uses.
fn pairwise_sum(lanes: [f32; 8]) -> f32 {
    let quads = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    let pairs = [quads[0] + quads[2], quads[1] + quads[3]];
    pairs[0] + pairs[1]
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

    /// Ours against candle's `QMatMul` on the same quantized weights; then each row alone, and
    /// the AVX2 and VNNI forms, bit for bit.
    fn agrees_with_candle<B: WeightBlock>(matrix: impl Fn(&QLinear) -> Option<&KernelMatrix<B>>) {
        let (out, width) = (37, 128);
        let weights = Tensor::from_vec(values(out * width, 7), (out, width), &Device::Cpu).unwrap();
        let quantize = || QTensor::quantize(&weights, B::DTYPE).unwrap();
        let ours = QLinear::new(quantize()).unwrap();
        let kernel = matrix(&ours).expect("our kernel runs this type");
        let candle = QMatMul::from_qtensor(quantize()).unwrap();
        // Seven rows: tiles of `INPUTS_TOGETHER` and a row left over.
        let x = Tensor::from_vec(values(7 * width, 3), (7, width), &Device::Cpu).unwrap();
        let batched = ours.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        // The same integer products; only the order of the float sums differs from candle's.
        for (got, expected) in
            batched.iter().flatten().zip(candle.forward(&x).unwrap().to_vec2::<f32>().unwrap().iter().flatten())
        {
            assert!((got - expected).abs() <= 1e-4 * expected.abs().max(1.0), "{got} vs {expected}");
        }
        for (row, expected) in batched.iter().enumerate() {
            let alone = ours.forward(&x.narrow(0, row, 1).unwrap()).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(&alone[0], expected, "row {row} alone and in a batch of 7");
        }
        // AVX-512 VNNI, where the CPU has it, gives the AVX2 path's results bit for bit.
        let input = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let [avx2] = KernelMatrix::matmul_all(&[kernel], &input, 7, false).try_into().unwrap();
        assert_eq!(avx2, batched.concat());
        if lanes::has_vnni() {
            assert_eq!(KernelMatrix::matmul_all(&[kernel], &input, 7, true), [avx2]);
        }
    }

    #[test]
    fn the_q4_1_kernel_agrees_with_candle_and_a_row_ignores_its_batch() {
        agrees_with_candle::<Q4_1Block>(|linear| match linear {
            QLinear::Q4_1(matrix) => Some(matrix),
            _ => None,
        });
    }

    #[test]
    fn the_q8_0_kernel_agrees_with_candle_and_a_row_ignores_its_batch() {
        agrees_with_candle::<Q8_0Block>(|linear| match linear {
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
        let x = Tensor::from_vec(values(5 * 64, 3), (5, 64), &Device::Cpu).unwrap();
        let alone = |layer: &QLinear| layer.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (q, k, v) =
            (linear(40, 1, GgmlDType::Q4_1), linear(24, 2, GgmlDType::Q4_1), linear(24, 4, GgmlDType::Q4_1));
        assert_eq!(QLinear::forward_all([&q, &k, &v], &x).unwrap(), [alone(&q), alone(&k), alone(&v)]);
        // Mixed types go one by one, with the same results.
        let (eight, zero) = (linear(16, 5, GgmlDType::Q8_0), linear(32, 6, GgmlDType::Q4_0));
        assert_eq!(QLinear::forward_all([&q, &eight, &zero], &x).unwrap(), [alone(&q), alone(&eight), alone(&zero)]);
    }

    #[test]
    fn other_types_use_candle() {
        let weights = Tensor::from_vec(values(32 * 64, 1), (32, 64), &Device::Cpu).unwrap();
        let quantized = QTensor::quantize(&weights, GgmlDType::Q4_0).unwrap();
        assert!(matches!(QLinear::new(quantized).unwrap(), QLinear::Other(_)));
    }
}
