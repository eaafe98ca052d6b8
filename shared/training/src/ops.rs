//! Differentiable versions of the fused CPU kernels the training forward
//! needs, as candle custom ops.
//!
//! candle's fused rms-norm, rotary and softmax kernels have no backward
//! pass, and their composite versions keep every intermediate tensor alive
//! in the graph until the backward pass (several per call, 30 layers deep).
//! Each op here runs the fused kernel forward, keeps only its input and
//! output, and computes its gradient from them. candle's matmul backward
//! also computes the gradient of the weight operand, which for a frozen
//! weight is as much work as the forward product and thrown away; the
//! frozen projection here returns only the input's gradient.

use candle_core::{CpuStorage, CustomOp1, D, Device, Layout, Result, Shape, Storage, Tensor};

/// Runs `f` on the op's input as a plain tensor and hands back the result's
/// storage. The input is copied out of the graph once (one row-major copy,
/// small next to the kernels it feeds).
fn via_tensor(
    storage: &CpuStorage,
    layout: &Layout,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(CpuStorage, Shape)> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op input must be contiguous".into()))?;
    let input = Tensor::from_slice(
        &storage.as_slice::<f32>()?[start..end],
        layout.shape(),
        &Device::Cpu,
    )?;
    let output = f(&input)?.contiguous()?;
    let shape = output.shape().clone();
    let (out, out_layout) = output.storage_and_layout();
    match &*out {
        Storage::Cpu(cpu) if out_layout.start_offset() == 0 => Ok((cpu.clone(), shape)),
        _ => candle_core::bail!("custom op output must be a fresh CPU tensor"),
    }
}

/// `x · Wᵀ` with `W` frozen.
pub struct Frozen {
    /// (output, input)
    pub weight: Tensor,
}

impl Frozen {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(FrozenLinear(self.weight.clone()))
    }
}

struct FrozenLinear(Tensor);

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        via_tensor(storage, layout, |x| x.broadcast_matmul(&self.0.t()?))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.broadcast_matmul(&self.0)?))
    }
}

/// RMS norm with a frozen scale.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNorm {
        weight: weight.clone(),
        eps,
    })
}

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        via_tensor(storage, layout, |x| {
            candle_nn::ops::rms_norm(x, &self.weight, self.eps)
        })
    }

    /// y = x·r·w with r = 1/√(mean(x²)+ε), so
    /// dx = r·(g·w) − x·r³·mean(g·w·x).
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?
            .sqrt()?
            .recip()?;
        let gw = grad.broadcast_mul(&self.weight)?;
        let dot = (&gw * x)?.mean_keepdim(D::Minus1)?;
        let direct = gw.broadcast_mul(&r)?;
        let through_r = x.broadcast_mul(&(r.powf(3.0)? * dot)?)?;
        Ok(Some((direct - through_r)?))
    }
}

/// Rotary embedding of interleaved pairs (llama.cpp's layout), for
/// (batch, heads, sequence, head_dim) with per-row `cos`/`sin`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
    })
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope-interleaved"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        via_tensor(storage, layout, |x| {
            candle_nn::rotary_emb::rope_i(x, &self.cos, &self.sin)
        })
    }

    /// A rotation's gradient is the opposite rotation.
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(candle_nn::rotary_emb::rope_i(
            &grad,
            &self.cos,
            &self.sin.neg()?,
        )?))
    }
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        via_tensor(storage, layout, candle_nn::ops::softmax_last_dim)
    }

    /// dx = y·(g − Σ g·y).
    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * grad.broadcast_sub(&dot)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The custom op's gradient equals the one candle derives from the
    /// composite (slow) version of the same function.
    fn same_gradient(
        fast: impl Fn(&Tensor) -> Result<Tensor>,
        slow: impl Fn(&Tensor) -> Result<Tensor>,
        shape: &[usize],
    ) {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap();
        let out_shape = slow(x.as_tensor()).unwrap().shape().clone();
        let probe = Tensor::randn(0f32, 1.0, out_shape, &Device::Cpu).unwrap();
        let grad_of = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let y = f(x.as_tensor()).unwrap();
            let loss = (y * &probe).unwrap().sum_all().unwrap();
            loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
        };
        let (a, b) = (grad_of(&fast), grad_of(&slow));
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
    }

    #[test]
    fn gradients_match_the_composite_versions() {
        let w = Tensor::randn(0f32, 1.0, 8, &Device::Cpu).unwrap();
        same_gradient(
            |x| rms_norm(x, &w, 1e-5),
            |x| candle_nn::ops::rms_norm_slow(x, &w, 1e-5),
            &[5, 8],
        );
        same_gradient(
            softmax,
            |x| candle_nn::ops::softmax(x, D::Minus1),
            &[3, 5, 7],
        );
        let cos = Tensor::randn(0f32, 1.0, (6, 4), &Device::Cpu).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (6, 4), &Device::Cpu).unwrap();
        same_gradient(
            |x| rope(x, &cos, &sin),
            |x| candle_nn::rotary_emb::rope_i_slow(x, &cos, &sin),
            &[1, 2, 6, 8],
        );
        let weight = Tensor::randn(0f32, 1.0, (3, 8), &Device::Cpu).unwrap();
        let frozen = Frozen {
            weight: weight.clone(),
        };
        same_gradient(|x| frozen.forward(x), |x| x.matmul(&weight.t()?), &[5, 8]);
    }
}
