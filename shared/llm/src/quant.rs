//! Matrix products on weights kept in the GGUF file's own quantization.
//!
//! The weights are read in place from a memory map of the file: one copy,
//! shared by every session, every thread and every process that maps the
//! same file, and no load-time conversion. Activations are quantized 32
//! values to a scale (llama.cpp's `q8_1`/`q8_0` for these formats), so the
//! arithmetic is llama.cpp's: for a Q4_1 block `x = d·q + m` against
//! activations `a = d_a·q_a`, the dot product is
//! `d·d_a·Σ q·q_a + m·(d_a·Σ q_a)`, with the integer sum on SIMD units.

use std::sync::Arc;

use candle_core::{Result, quantized::GgmlDType};
use half::f16;
use memmap2::Mmap;

/// Values per block, in every format here.
pub const BLOCK: usize = 32;

/// The block formats the kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 32 unsigned 4-bit values with an f16 scale and an f16 minimum.
    Q4_1,
    /// 32 signed 8-bit values with an f16 scale.
    Q8_0,
}

impl Format {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// A `rows × cols` weight matrix stored row after row as blocks, inside a
/// memory-mapped file.
#[derive(Clone)]
pub struct QMatrix {
    map: Arc<Mmap>,
    start: usize,
    format: Format,
    rows: usize,
    cols: usize,
}

impl QMatrix {
    /// The matrix at byte `start` of `map`; fails when it does not fit.
    pub fn new(
        map: Arc<Mmap>,
        start: usize,
        format: Format,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        if !cols.is_multiple_of(BLOCK) {
            candle_core::bail!("rows of {cols} values are not whole blocks of {BLOCK}");
        }
        let bytes = rows * (cols / BLOCK) * format.block_bytes();
        if start.checked_add(bytes).is_none_or(|end| end > map.len()) {
            candle_core::bail!("a {rows}x{cols} matrix at byte {start} runs past the file");
        }
        Ok(Self {
            map,
            start,
            format,
            rows,
            cols,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn format(&self) -> Format {
        self.format
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// The blocks of row `r`.
    fn row(&self, r: usize) -> &[u8] {
        let len = self.row_bytes();
        let at = self.start + r * len;
        &self.map[at..at + len]
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        let size = self.format.block_bytes();
        for (block, out) in row.chunks_exact(size).zip(out.chunks_exact_mut(BLOCK)) {
            let d = half_at(block, 0);
            match self.format {
                Format::Q4_1 => {
                    let m = half_at(block, 2);
                    for (j, &byte) in block[4..20].iter().enumerate() {
                        out[j] = d * f32::from(byte & 0x0f) + m;
                        out[j + 16] = d * f32::from(byte >> 4) + m;
                    }
                }
                Format::Q8_0 => {
                    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                        *o = d * f32::from(q as i8);
                    }
                }
            }
        }
    }
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Activations quantized 32 values to a scale: `x ≈ d·q`, with `s = d·Σq`
/// kept for the minimum term of Q4_1 blocks.
pub struct Quantized {
    qs: Vec<i8>,
    /// (d, s) of each block, side by side: the kernels load both at once.
    ds: Vec<[f32; 2]>,
    /// Values per row.
    cols: usize,
}

impl Quantized {
    /// Quantizes `rows` rows of `cols` values each.
    pub fn new(x: &[f32], cols: usize) -> Self {
        let blocks = x.len() / BLOCK;
        let mut quantized = Self {
            qs: vec![0; x.len()],
            ds: Vec::with_capacity(blocks),
            cols,
        };
        for (values, qs) in x
            .chunks_exact(BLOCK)
            .zip(quantized.qs.chunks_exact_mut(BLOCK))
        {
            let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(values) {
                *q = (v * inverse).round() as i8;
                sum += i32::from(*q);
            }
            quantized.ds.push([d, d * sum as f32]);
        }
        quantized
    }

    fn row(&self, i: usize) -> ActRow<'_> {
        let blocks = self.cols / BLOCK;
        ActRow {
            qs: &self.qs[i * self.cols..(i + 1) * self.cols],
            ds: &self.ds[i * blocks..(i + 1) * blocks],
        }
    }
}

#[derive(Clone, Copy)]
struct ActRow<'a> {
    qs: &'a [i8],
    ds: &'a [[f32; 2]],
}

/// Which dot-product kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI on 256-bit registers (`vpdpbusd`).
    Avx512Vnni,
    /// AVX2 with FMA and F16C (`vpmaddubsw`).
    Avx2,
    /// Plain Rust, for other CPUs.
    Scalar,
}

impl Isa {
    /// The best kernel this CPU has.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c");
            let vnni = std::is_x86_feature_detected!("avx512vnni")
                && std::is_x86_feature_detected!("avx512vl");
            match (avx2, vnni) {
                (true, true) => return Self::Avx512Vnni,
                (true, false) => return Self::Avx2,
                _ => {}
            }
        }
        Self::Scalar
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::Avx2 => "avx2",
            Self::Scalar => "scalar",
        }
    }
}

/// The dot product of one weight row with one activation row.
fn dot(isa: Isa, format: Format, row: &[u8], act: ActRow<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `Isa::detect` saw the CPU features each kernel enables.
    unsafe {
        match (isa, format) {
            (Isa::Avx512Vnni, Format::Q4_1) => return x86::q4_1_vnni(row, act),
            (Isa::Avx512Vnni, Format::Q8_0) => return x86::q8_0_vnni(row, act),
            (Isa::Avx2, Format::Q4_1) => return x86::q4_1_avx2(row, act),
            (Isa::Avx2, Format::Q8_0) => return x86::q8_0_avx2(row, act),
            (Isa::Scalar, _) => {}
        }
    }
    let _ = isa;
    scalar_dot(format, row, act)
}

fn scalar_dot(format: Format, row: &[u8], act: ActRow<'_>) -> f32 {
    let size = format.block_bytes();
    let mut total = 0f32;
    for (b, block) in row.chunks_exact(size).enumerate() {
        let a = &act.qs[b * BLOCK..(b + 1) * BLOCK];
        let d = half_at(block, 0);
        match format {
            Format::Q4_1 => {
                let mut sum = 0i32;
                for (j, &byte) in block[4..20].iter().enumerate() {
                    sum += i32::from(byte & 0x0f) * i32::from(a[j]);
                    sum += i32::from(byte >> 4) * i32::from(a[j + 16]);
                }
                let [da, sa] = act.ds[b];
                total += d * da * sum as f32 + half_at(block, 2) * sa;
            }
            Format::Q8_0 => {
                let sum: i32 = block[2..34]
                    .iter()
                    .zip(a)
                    .map(|(&w, &a)| i32::from(w as i8) * i32::from(a))
                    .sum();
                total += d * act.ds[b][0] * sum as f32;
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Two blocks per iteration into two accumulators, so that the
    //! latency of one block's multiply-add overlaps the next one's; the
    //! scales of a block and its activations are multiplied as one vector
    //! ([d, m] × [d_a, s_a]), which also keeps every register write a full
    //! one (a 16-bit insert would make each block wait for the last).
    use std::arch::x86_64::*;

    use super::{ActRow, BLOCK};

    /// `[d, m·s_a]`-style products: the block's two f16 header values
    /// (scale, and minimum or the first quants) times the activation
    /// block's (d_a, s_a).
    #[inline(always)]
    unsafe fn scales(block: &[u8], act: ActRow<'_>, b: usize) -> __m128 {
        unsafe {
            let header = _mm_cvtsi32_si128(std::ptr::read_unaligned(block.as_ptr().cast::<i32>()));
            let ds = _mm_castpd_ps(_mm_load_sd(act.ds.as_ptr().add(b).cast::<f64>()));
            _mm_mul_ps(_mm_cvtph_ps(header), ds)
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
        }
    }

    /// The 32 unsigned values of a Q4_1 block's 16 bytes, in order.
    #[inline(always)]
    unsafe fn nibbles(bytes: &[u8]) -> __m256i {
        unsafe {
            let packed = _mm_loadu_si128(bytes.as_ptr().cast());
            let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
        }
    }

    #[inline(always)]
    unsafe fn activations(act: ActRow<'_>, b: usize) -> __m256i {
        unsafe { _mm256_loadu_si256(act.qs.as_ptr().add(b * BLOCK).cast()) }
    }

    /// Σ unsigned × signed bytes as eight i32 lanes, on AVX2.
    #[inline(always)]
    unsafe fn sum_avx2(unsigned: __m256i, signed: __m256i) -> __m256i {
        // Products of 15 (or 127) by 127 never saturate the i16 pairs.
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(unsigned, signed), _mm256_set1_epi16(1)) }
    }

    #[inline(always)]
    unsafe fn sum_vnni(unsigned: __m256i, signed: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned, signed) }
    }

    /// One Q4_1 block's integer `products` scaled into `acc`, its minimum
    /// term (lane 1 of the scales) into `minimums`.
    #[inline(always)]
    unsafe fn q4_1_block(
        block: &[u8],
        act: ActRow<'_>,
        b: usize,
        products: __m256i,
        acc: &mut __m256,
        minimums: &mut __m128,
    ) {
        unsafe {
            let scales = scales(block, act, b);
            *acc = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(products),
                _mm256_broadcastss_ps(scales),
                *acc,
            );
            *minimums = _mm_add_ps(*minimums, scales);
        }
    }

    /// A Q8_0 block's bytes as |w| and the activations with w's sign:
    /// unsigned × signed, as the byte products need.
    #[inline(always)]
    unsafe fn q8_0_operands(block: &[u8], act: ActRow<'_>, b: usize) -> (__m256i, __m256i) {
        unsafe {
            let w = _mm256_loadu_si256(block.as_ptr().add(2).cast());
            let a = activations(act, b);
            (_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
        }
    }

    /// One Q8_0 block's integer `products` scaled into `acc`.
    #[inline(always)]
    unsafe fn q8_0_block(
        block: &[u8],
        act: ActRow<'_>,
        b: usize,
        products: __m256i,
        acc: &mut __m256,
    ) {
        unsafe {
            let scales = scales(block, act, b);
            *acc = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(products),
                _mm256_broadcastss_ps(scales),
                *acc,
            );
        }
    }

    macro_rules! kernels {
        ($q4_1:ident, $q8_0:ident, $features:literal, $sum:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $q4_1(row: &[u8], act: ActRow<'_>) -> f32 {
                unsafe {
                    let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                    let (mut min_even, mut min_odd) = (_mm_setzero_ps(), _mm_setzero_ps());
                    let mut pairs = row.chunks_exact(40);
                    let mut b = 0;
                    let products =
                        |block: &[u8], b| $sum(nibbles(&block[4..20]), activations(act, b));
                    for pair in &mut pairs {
                        let (first, second) = pair.split_at(20);
                        let p = products(first, b);
                        q4_1_block(first, act, b, p, &mut even, &mut min_even);
                        let p = products(second, b + 1);
                        q4_1_block(second, act, b + 1, p, &mut odd, &mut min_odd);
                        b += 2;
                    }
                    let rest = pairs.remainder();
                    if !rest.is_empty() {
                        let p = products(rest, b);
                        q4_1_block(rest, act, b, p, &mut even, &mut min_even);
                    }
                    let minimums = _mm_add_ps(min_even, min_odd);
                    hsum(_mm256_add_ps(even, odd)) + _mm_cvtss_f32(_mm_movehdup_ps(minimums))
                }
            }

            #[target_feature(enable = $features)]
            pub unsafe fn $q8_0(row: &[u8], act: ActRow<'_>) -> f32 {
                unsafe {
                    let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                    let mut pairs = row.chunks_exact(68);
                    let mut b = 0;
                    let products = |block: &[u8], b| {
                        let (w, a) = q8_0_operands(block, act, b);
                        $sum(w, a)
                    };
                    for pair in &mut pairs {
                        let (first, second) = pair.split_at(34);
                        let p = products(first, b);
                        q8_0_block(first, act, b, p, &mut even);
                        let p = products(second, b + 1);
                        q8_0_block(second, act, b + 1, p, &mut odd);
                        b += 2;
                    }
                    let rest = pairs.remainder();
                    if !rest.is_empty() {
                        let p = products(rest, b);
                        q8_0_block(rest, act, b, p, &mut even);
                    }
                    hsum(_mm256_add_ps(even, odd))
                }
            }
        };
    }

    kernels!(q4_1_avx2, q8_0_avx2, "avx2,fma,f16c", sum_avx2);
    kernels!(
        q4_1_vnni,
        q8_0_vnni,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
        sum_vnni
    );
}

/// Several matrices reading the same input, their outputs side by side
/// (q, k and v; gate and up): one pass over the input for all of them.
#[derive(Clone)]
pub struct Stacked {
    parts: Vec<QMatrix>,
    rows: usize,
    cols: usize,
    isa: Isa,
}

/// Where the threads write their rows of the output.
struct Output(*mut f32);
// SAFETY: every thread writes a disjoint set of elements.
unsafe impl Sync for Output {}

impl Stacked {
    /// `parts` must share their input width.
    pub fn new(parts: Vec<QMatrix>, isa: Isa) -> Result<Self> {
        let cols = parts.first().map_or(0, QMatrix::cols);
        if parts.iter().any(|p| p.cols != cols) {
            candle_core::bail!("stacked matrices read inputs of different widths");
        }
        let rows = parts.iter().map(QMatrix::rows).sum();
        Ok(Self {
            parts,
            rows,
            cols,
            isa,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weights read per product.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.rows * p.row_bytes()).sum()
    }

    /// `x` (m rows of `cols`) times the transposed matrix: m rows of `rows`.
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        let m = x.len() / self.cols;
        let acts = Quantized::new(x, self.cols);
        let mut out = vec![0f32; m * self.rows];
        let output = Output(out.as_mut_ptr());
        let (n, isa) = (self.rows, self.isa);
        candle_core::utils::barrier_pool().execute_chunked(n, |range| {
            let output = &output;
            for r in range {
                let (matrix, local) = self.locate(r);
                let row = matrix.row(local);
                for i in 0..m {
                    let value = dot(isa, matrix.format, row, acts.row(i));
                    // SAFETY: row r of the output belongs to this range.
                    unsafe { *output.0.add(i * n + r) = value };
                }
            }
        });
        out
    }

    /// The part holding stacked row `r`, and the row within it.
    fn locate(&self, mut r: usize) -> (&QMatrix, usize) {
        for part in &self.parts {
            if r < part.rows {
                return (part, r);
            }
            r -= part.rows;
        }
        unreachable!("row beyond the stacked matrices")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A memory map holding `rows` random rows of `cols` values in `format`.
    fn random_matrix(format: Format, rows: usize, cols: usize, seed: u64) -> QMatrix {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let scale = f16::from_f32(0.001 + (next() % 1000) as f32 * 1e-5);
            bytes.extend(scale.to_bits().to_le_bytes());
            match format {
                Format::Q4_1 => {
                    let minimum = f16::from_f32(-((next() % 1000) as f32) * 1e-4);
                    bytes.extend(minimum.to_bits().to_le_bytes());
                    bytes.extend((0..16).map(|_| next() as u8));
                }
                Format::Q8_0 => bytes.extend((0..32).map(|_| (next() % 255) as u8 ^ 0x80)),
            }
        }
        let mut file = tempfile_in_target();
        file.write_all(&bytes).unwrap();
        // SAFETY: the file is this test's own and nobody changes it.
        let map = unsafe { Mmap::map(&file).unwrap() };
        QMatrix::new(Arc::new(map), 0, format, rows, cols).unwrap()
    }

    fn tempfile_in_target() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "orchestrator-quant-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    /// The product computed in plain f32 from dequantized weights and
    /// dequantized activations: what every kernel must give, up to float
    /// summation order.
    fn reference(matrix: &QMatrix, x: &[f32]) -> Vec<f32> {
        let cols = matrix.cols();
        let acts = Quantized::new(x, cols);
        let dequantized_acts: Vec<f32> = acts
            .qs
            .iter()
            .enumerate()
            .map(|(i, &q)| acts.ds[i / BLOCK][0] * f32::from(q))
            .collect();
        let mut row = vec![0f32; cols];
        let m = x.len() / cols;
        let mut out = vec![0f32; m * matrix.rows()];
        for r in 0..matrix.rows() {
            matrix.dequantize_row(r, &mut row);
            for i in 0..m {
                let a = &dequantized_acts[i * cols..(i + 1) * cols];
                out[i * matrix.rows() + r] = row.iter().zip(a).map(|(w, a)| w * a).sum();
            }
        }
        out
    }

    fn activations(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0)
            .collect()
    }

    #[test]
    fn every_kernel_computes_the_quantized_product() {
        let isas = [Isa::Scalar, Isa::detect()];
        for format in [Format::Q4_1, Format::Q8_0] {
            let matrix = random_matrix(format, 40, 576, 7);
            let x = activations(3 * 576);
            let expected = reference(&matrix, &x);
            for isa in isas {
                let stacked = Stacked::new(vec![matrix.clone()], isa).unwrap();
                let got = stacked.matmul(&x);
                for (g, e) in got.iter().zip(&expected) {
                    assert!(
                        (g - e).abs() <= 1e-3 * e.abs().max(1.0),
                        "{format:?} on {isa:?}: {g} against {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn stacked_parts_put_their_outputs_side_by_side() {
        let a = random_matrix(Format::Q4_1, 8, 64, 1);
        let b = random_matrix(Format::Q8_0, 5, 64, 2);
        let x = activations(2 * 64);
        let stacked = Stacked::new(vec![a.clone(), b.clone()], Isa::detect()).unwrap();
        let got = stacked.matmul(&x);
        let (ra, rb) = (reference(&a, &x), reference(&b, &x));
        for i in 0..2 {
            let row = &got[i * 13..(i + 1) * 13];
            let want: Vec<f32> = ra[i * 8..(i + 1) * 8]
                .iter()
                .chain(&rb[i * 5..(i + 1) * 5])
                .copied()
                .collect();
            for (g, w) in row.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-3 * w.abs().max(1.0), "{g} against {w}");
            }
        }
    }

    #[test]
    fn a_matrix_running_past_the_file_is_refused() {
        let matrix = random_matrix(Format::Q8_0, 2, 32, 3);
        let error = QMatrix::new(matrix.map.clone(), 34, Format::Q8_0, 2, 32)
            .err()
            .unwrap();
        assert!(error.to_string().contains("runs past the file"), "{error}");
    }
}
