//! The BERT encoder of all-MiniLM-L6-v2 on plain f32 buffers.
//!
//! With candle's BERT, a profile found half the time in small matmuls (a
//! batched product per text and per head) and the rest in page faults from
//! every op's freshly allocated output, padding computed and masked, and
//! element-wise passes. Here a batch's texts are packed end to end (no
//! padding), each linear layer is one large product over every token (q, k
//! and v fused into one), attention runs one task per (text, head) on the
//! rayon pool, and the element-wise steps are branch-free loops the compiler
//! vectorises. Same arithmetic as sentence-transformers; the tests compare
//! the embeddings with its own.

use anyhow::Context;
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use gemm::Parallelism;
use rayon::prelude::*;

/// The shape of a BERT checkpoint (the fields of its `config.json` this
/// encoder needs).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

/// A loaded encoder. Immutable, so one instance serves every thread.
pub struct Bert {
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    /// Token type 0's row: every text here is a single segment.
    token_type: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    max_positions: usize,
}

struct Layer {
    /// q, k and v side by side: one product instead of three.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// `y = x·Wᵀ + b`, with W stored transposed (inputs × outputs, row-major) so
/// the product reads it row by row.
struct Linear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Bert {
    /// Reads the weights (sentence-transformers names, with or without the
    /// `bert.` prefix of a full BertModel checkpoint).
    pub fn load(vb: VarBuilder, config: &BertConfig) -> anyhow::Result<Self> {
        if config.hidden_act != "gelu" {
            anyhow::bail!("unsupported activation {:?} (only gelu)", config.hidden_act);
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            anyhow::bail!("hidden size is not a multiple of the head count");
        }
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps as f32;
        let embeddings = vb.pp("embeddings");
        let token_types = read(&embeddings.get((2, h), "token_type_embeddings.weight")?)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            word_embeddings: read(
                &embeddings.get((config.vocab_size, h), "word_embeddings.weight")?,
            )?,
            position_embeddings: read(&embeddings.get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )?)?,
            token_type: token_types[..h].to_vec(),
            embedding_norm: LayerNorm::load(embeddings.pp("LayerNorm"), h, eps)?,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
            max_positions: config.max_position_embeddings,
        })
    }

    /// The last hidden states of every text, packed: text i's tokens are
    /// rows `offsets[i]..offsets[i + 1]` of a (tokens × hidden) matrix.
    pub fn forward(&self, texts: &[&[u32]]) -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
        let mut offsets = Vec::with_capacity(texts.len() + 1);
        offsets.push(0);
        for ids in texts {
            if ids.len() > self.max_positions {
                anyhow::bail!(
                    "{} tokens exceed the model's {}",
                    ids.len(),
                    self.max_positions
                );
            }
            offsets.push(offsets.last().unwrap() + ids.len());
        }
        let tokens = *offsets.last().unwrap();
        let mut x = self.embed(texts, tokens)?;
        let mut buffers = Buffers::default();
        for layer in &self.layers {
            layer.forward(&mut x, &offsets, self.heads, &mut buffers);
        }
        Ok((x, offsets))
    }

    fn embed(&self, texts: &[&[u32]], tokens: usize) -> anyhow::Result<Vec<f32>> {
        let h = self.hidden;
        let mut x = vec![0f32; tokens * h];
        let rows = texts
            .iter()
            .flat_map(|ids| ids.iter().enumerate())
            .zip(x.chunks_exact_mut(h));
        for ((position, &id), row) in rows {
            let id = id as usize;
            let word = self
                .word_embeddings
                .get(id * h..(id + 1) * h)
                .with_context(|| format!("token id {id} is outside the vocabulary"))?;
            let place = &self.position_embeddings[position * h..(position + 1) * h];
            for (((out, w), p), t) in row.iter_mut().zip(word).zip(place).zip(&self.token_type) {
                *out = w + p + t;
            }
        }
        self.embedding_norm.apply(&mut x);
        Ok(x)
    }
}

/// Scratch space reused by every layer of one forward pass.
#[derive(Default)]
struct Buffers {
    qkv: Vec<f32>,
    context: Vec<f32>,
    intermediate: Vec<f32>,
}

impl Layer {
    fn load(vb: VarBuilder, config: &BertConfig) -> anyhow::Result<Self> {
        let h = config.hidden_size;
        let eps = config.layer_norm_eps as f32;
        let attention = vb.pp("attention");
        let me = attention.pp("self");
        let q = Linear::load(me.pp("query"), h, h)?;
        let k = Linear::load(me.pp("key"), h, h)?;
        let v = Linear::load(me.pp("value"), h, h)?;
        Ok(Self {
            qkv: Linear::side_by_side(&[q, k, v]),
            attention_out: Linear::load(attention.pp("output.dense"), h, h)?,
            attention_norm: LayerNorm::load(attention.pp("output.LayerNorm"), h, eps)?,
            intermediate: Linear::load(vb.pp("intermediate.dense"), h, config.intermediate_size)?,
            output: Linear::load(vb.pp("output.dense"), config.intermediate_size, h)?,
            output_norm: LayerNorm::load(vb.pp("output.LayerNorm"), h, eps)?,
        })
    }

    /// One encoder layer, in place on `x` (tokens × hidden).
    fn forward(&self, x: &mut [f32], offsets: &[usize], heads: usize, buffers: &mut Buffers) {
        let tokens = *offsets.last().unwrap();
        self.qkv.forward(x, tokens, &mut buffers.qkv);
        let hidden = self.attention_out.outputs;
        attention(&buffers.qkv, offsets, heads, hidden, &mut buffers.context);
        self.attention_out.accumulate(&buffers.context, tokens, x);
        self.attention_norm.apply(x);
        self.intermediate
            .forward(x, tokens, &mut buffers.intermediate);
        elementwise::gelu(&mut buffers.intermediate);
        self.output.accumulate(&buffers.intermediate, tokens, x);
        self.output_norm.apply(x);
    }
}

impl Linear {
    fn load(vb: VarBuilder, inputs: usize, outputs: usize) -> anyhow::Result<Self> {
        let weight = vb.get((outputs, inputs), "weight")?;
        Ok(Self {
            weight: read(&weight.t()?.contiguous()?)?,
            bias: read(&vb.get(outputs, "bias")?)?,
            inputs,
            outputs,
        })
    }

    /// Several layers reading the same input, as one wider layer.
    fn side_by_side(parts: &[Linear]) -> Self {
        let inputs = parts[0].inputs;
        let outputs = parts.iter().map(|p| p.outputs).sum();
        let mut weight = Vec::with_capacity(inputs * outputs);
        for row in 0..inputs {
            for part in parts {
                weight
                    .extend_from_slice(&part.weight[row * part.outputs..(row + 1) * part.outputs]);
            }
        }
        Self {
            weight,
            bias: parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
            inputs,
            outputs,
        }
    }

    /// `out = x·Wᵀ + b`, `out` resized to rows × outputs.
    fn forward(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) {
        out.clear();
        out.reserve(rows * self.outputs);
        for _ in 0..rows {
            out.extend_from_slice(&self.bias);
        }
        self.product_into(x, rows, out);
    }

    /// `residual += x·Wᵀ + b`: the layer's output added to the stream.
    fn accumulate(&self, x: &[f32], rows: usize, residual: &mut [f32]) {
        residual
            .par_chunks_exact_mut(self.outputs)
            .with_min_len(64)
            .for_each(|row| row.iter_mut().zip(&self.bias).for_each(|(r, b)| *r += b));
        self.product_into(x, rows, residual);
    }

    /// `out += x·Wᵀ`, one product over every row on both cores.
    fn product_into(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        assert_eq!(x.len(), rows * self.inputs);
        assert_eq!(out.len(), rows * self.outputs);
        // SAFETY: the asserts above bound every index the product computes
        // from these shapes and row strides; `out` does not alias x or W.
        unsafe {
            product(
                (rows, self.outputs, self.inputs),
                out.as_mut_ptr(),
                self.outputs,
                true,
                View::rows(x.as_ptr(), self.inputs),
                View::rows(self.weight.as_ptr(), self.outputs),
                1.0,
                Parallelism::Rayon(0),
            );
        }
    }
}

impl LayerNorm {
    fn load(vb: VarBuilder, size: usize, eps: f32) -> anyhow::Result<Self> {
        Ok(Self {
            weight: read(&vb.get(size, "weight")?)?,
            bias: read(&vb.get(size, "bias")?)?,
            eps,
        })
    }

    /// Normalises every row of `x` in place.
    fn apply(&self, x: &mut [f32]) {
        x.par_chunks_exact_mut(self.weight.len())
            .with_min_len(64)
            .for_each(|row| elementwise::layer_norm(row, &self.weight, &self.bias, self.eps));
    }
}

/// A matrix operand of [`product`]: its first element and the distance
/// between rows and between columns, so a transposed or strided view (one
/// head's columns of the qkv matrix) needs no copy.
#[derive(Clone, Copy)]
struct View {
    at: *const f32,
    row: isize,
    column: isize,
}

impl View {
    fn rows(at: *const f32, row: usize) -> Self {
        Self {
            at,
            row: row as isize,
            column: 1,
        }
    }

    fn transposed(self) -> Self {
        Self {
            at: self.at,
            row: self.column,
            column: self.row,
        }
    }
}

/// `dst (m × n, row stride dst_row) = scale · lhs (m × k) · rhs (k × n)`,
/// added to what `dst` holds when `accumulate`.
///
/// # Safety
/// Every view must address valid memory for its shape, and `dst` must not
/// overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_row: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
    parallelism: Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row as isize,
            accumulate,
            lhs.at,
            lhs.column,
            lhs.row,
            rhs.at,
            rhs.column,
            rhs.row,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The context matrix that attention tasks write into, each into its own
/// (text, head) block of rows and columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint blocks (see `attention`), and the buffer
// outlives the parallel loop.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `offset` must lie inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.add(offset) }
    }
}

/// Scaled dot-product attention of every text with itself, one task per
/// (text, head): `qkv` rows hold q | k | v, `context` gets each head's
/// output in its columns. Texts are packed, so nothing needs masking.
fn attention(qkv: &[f32], offsets: &[usize], heads: usize, hidden: usize, context: &mut Vec<f32>) {
    let (width, head_size, tokens) = (3 * hidden, hidden / heads, *offsets.last().unwrap());
    assert_eq!(qkv.len(), tokens * width);
    context.clear();
    context.resize(tokens * hidden, 0.0);
    let out = SharedOut(context.as_mut_ptr());
    let scale = 1.0 / (head_size as f32).sqrt();
    let tasks: Vec<(usize, usize)> = (0..offsets.len() - 1)
        .flat_map(|text| (0..heads).map(move |head| (text, head)))
        .collect();
    tasks
        .into_par_iter()
        .for_each_init(Vec::new, |scores, (text, head)| {
            let (start, len) = (offsets[text], offsets[text + 1] - offsets[text]);
            if len == 0 {
                return;
            }
            scores.clear();
            scores.resize(len * len, 0.0);
            let column = start * width + head * head_size;
            let q = View::rows(qkv[column..].as_ptr(), width);
            let k = View::rows(qkv[column + hidden..].as_ptr(), width);
            let v = View::rows(qkv[column + 2 * hidden..].as_ptr(), width);
            // SAFETY: q, k and v address `len` rows of `head_size` columns at
            // row stride `width` inside `qkv` (start + len <= tokens, asserted
            // above). This task alone writes rows start..start+len, columns
            // head*head_size..(head+1)*head_size of `context`.
            unsafe {
                let scores_at = scores.as_mut_ptr();
                product(
                    (len, len, head_size),
                    scores_at,
                    len,
                    false,
                    q,
                    k.transposed(),
                    scale,
                    Parallelism::None,
                );
                scores.chunks_exact_mut(len).for_each(elementwise::softmax);
                let block = out.at(start * hidden + head * head_size);
                let weights = View::rows(scores.as_ptr(), len);
                product(
                    (len, head_size, len),
                    block,
                    hidden,
                    false,
                    weights,
                    v,
                    1.0,
                    Parallelism::None,
                );
            }
        });
}

fn read(tensor: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// Element-wise kernels written without branches or libm calls so they
/// vectorise; on x86-64 with AVX2 and FMA (checked at run time) they are
/// compiled a second time for those instructions.
pub(crate) mod elementwise {
    macro_rules! dispatch {
        ($(fn $name:ident($($arg:ident: $ty:ty),*) $body:block)*) => {$(
            pub fn $name($($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn wide($($arg: $ty),*) $body
                    if std::is_x86_feature_detected!("avx2")
                        && std::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU has just been checked for AVX2 and FMA.
                        return unsafe { wide($($arg),*) };
                    }
                }
                $body
            }
        )*};
    }

    dispatch! {
        fn gelu(x: &mut [f32]) {
            // BERT's exact GELU: x/2 · (1 + erf(x/√2)).
            for v in x.iter_mut() {
                *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }

        fn softmax(row: &mut [f32]) {
            // Separate passes: a sum carried through the exp loop would
            // keep it from vectorising.
            let max = lanes(row, f32::MIN, |m, v| m.max(v)).into_iter().fold(f32::MIN, f32::max);
            row.iter_mut().for_each(|v| *v = exp(*v - max));
            let inverse = 1.0 / lanes(row, 0.0, |s, v| s + v).iter().sum::<f32>();
            row.iter_mut().for_each(|v| *v *= inverse);
        }

        fn layer_norm(row: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
            let n = row.len() as f32;
            let mean = lanes(row, 0.0, |s, v| s + v).iter().sum::<f32>() / n;
            let variance = lanes(row, 0.0, |s, v| s + (v - mean) * (v - mean))
                .iter()
                .sum::<f32>()
                / n;
            let inverse = 1.0 / (variance + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                *v = (*v - mean) * inverse * w + b;
            }
        }
    }

    /// Folds `values` into 16 independent accumulators, so the compiler
    /// can keep them in vector registers: a single f32 accumulator is a
    /// serial chain it may not reorder.
    #[inline(always)]
    fn lanes(values: &[f32], start: f32, step: impl Fn(f32, f32) -> f32) -> [f32; 16] {
        let mut acc = [start; 16];
        let chunks = values.chunks_exact(16);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (a, &v) in acc.iter_mut().zip(chunk) {
                *a = step(*a, v);
            }
        }
        for (a, &v) in acc.iter_mut().zip(tail) {
            *a = step(*a, v);
        }
        acc
    }

    /// erf to within 1e-6 (Eigen's rational approximation on [-4, 4];
    /// outside, erf is ±1 in f32).
    #[inline(always)]
    #[allow(clippy::excessive_precision)] // the coefficients as published
    pub fn erf(x: f32) -> f32 {
        let x = x.clamp(-4.0, 4.0);
        let x2 = x * x;
        let mut p = -2.726_142_2e-10_f32;
        for c in [
            2.770_681_4e-8,
            -2.101_024e-6,
            -5.692_506_4e-5,
            -7.349_906_3e-4,
            -2.954_600_1e-3,
            -1.609_603_3e-2,
        ] {
            p = p.mul_add(x2, c);
        }
        let mut q = -1.456_607_2e-5_f32;
        for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
            q = q.mul_add(x2, c);
        }
        x * p / q
    }

    /// e^x to within 2 ulp for x <= 0 (softmax's range): 2^n · e^r with
    /// |r| <= ln2/2 and a degree-6 polynomial for e^r.
    #[inline(always)]
    #[allow(clippy::excessive_precision)] // the coefficients as published
    pub fn exp(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        // Round x/ln2 to the nearest integer without a libm call: adding
        // 1.5·2^23 pushes the fraction out of the mantissa.
        const SHIFT: f32 = 12_582_912.0;
        let shifted = x * std::f32::consts::LOG2_E + SHIFT;
        let n = shifted - SHIFT;
        // The integer n also sits in the low mantissa bits of `shifted`:
        // reading it there keeps the loop vectorised, where `n as i32`
        // (a saturating cast) turns into scalar code per element.
        let n_bits = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
        let r = n.mul_add(-0.693_145_75, x);
        let r = n.mul_add(-1.428_606_8e-6, r);
        let mut p = 1.987_569_1e-4_f32;
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_66,
            0.5,
        ] {
            p = p.mul_add(r, c);
        }
        let e_r = (p * r * r) + r + 1.0;
        let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
        e_r * scale
    }
}

#[cfg(test)]
mod tests {
    use super::elementwise;

    #[test]
    fn erf_matches_libm() {
        let worst = (-6000..=6000)
            .map(|i| i as f32 / 1000.0)
            .map(|x| (elementwise::erf(x) - libm::erff(x)).abs())
            .fold(0.0, f32::max);
        assert!(worst < 2e-6, "worst error {worst}");
    }

    #[test]
    fn exp_matches_std_over_softmax_range() {
        let worst = (-87_000..=0)
            .map(|i| i as f32 / 1000.0)
            .map(|x| {
                let (ours, std) = (elementwise::exp(x), x.exp());
                (ours - std).abs() / std
            })
            .fold(0.0, f32::max);
        assert!(worst < 1e-6, "worst relative error {worst}");
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut row = vec![1.0, 3.0, -2.0, 3.0, 0.5];
        elementwise::softmax(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[1] == row[3] && row[1] > row[0] && row[0] > row[4] && row[4] > row[2]);
        let expected = 1.0f32.exp()
            / [1.0f32, 3.0, -2.0, 3.0, 0.5]
                .iter()
                .map(|v| v.exp())
                .sum::<f32>();
        assert!((row[0] - expected).abs() < 1e-6);
    }

    #[test]
    fn long_rows_match_a_double_precision_reference() {
        // 37 and 384 values: whole 16-lane blocks and a tail.
        let values: Vec<f32> = (0..37)
            .map(|i| ((i * 17 % 23) as f32 - 11.0) / 3.0)
            .collect();
        let mut row = values.clone();
        elementwise::softmax(&mut row);
        let max = values.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
        let total: f64 = values.iter().map(|&v| (v as f64 - max).exp()).sum();
        for (got, &v) in row.iter().zip(&values) {
            assert!((*got as f64 - (v as f64 - max).exp() / total).abs() < 1e-6);
        }

        let values: Vec<f32> = (0..384)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) / 7.0)
            .collect();
        let (weight, bias): (Vec<f32>, Vec<f32>) = (0..384)
            .map(|i| (1.0 + (i % 5) as f32 / 10.0, (i % 3) as f32 - 1.0))
            .unzip();
        let mut row = values.clone();
        elementwise::layer_norm(&mut row, &weight, &bias, 1e-12);
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / 384.0;
        let variance = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / 384.0;
        for (i, got) in row.iter().enumerate() {
            let expected =
                (values[i] as f64 - mean) / variance.sqrt() * weight[i] as f64 + bias[i] as f64;
            assert!(
                (*got as f64 - expected).abs() < 1e-5,
                "{i}: {got} vs {expected}"
            );
        }
    }
}
