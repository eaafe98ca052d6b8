//! Inner products for exact search. The scan over every stored vector is
//! memory-bound, so the kernel only has to keep up with memory: AVX2 + FMA
//! when the CPU has them (checked at run time, so one binary runs anywhere),
//! a portable loop that LLVM vectorises otherwise.

/// Inner product of two equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports both features, checked just above.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums break the add dependency chain.
    let mut sums = [0f32; 8];
    let (a_head, a_tail) = a.split_at(a.len() - a.len() % 8);
    let (b_head, b_tail) = b.split_at(a_head.len());
    for (x, y) in a_head.chunks_exact(8).zip(b_head.chunks_exact(8)) {
        for lane in 0..8 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let blocks = n / 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    for block in 0..blocks {
        let base = block * 32;
        for (lane, sum) in acc.iter_mut().enumerate() {
            let offset = base + lane * 8;
            // SAFETY: offset + 8 <= blocks * 32 <= n for both slices.
            let x = unsafe { _mm256_loadu_ps(a.as_ptr().add(offset)) };
            let y = unsafe { _mm256_loadu_ps(b.as_ptr().add(offset)) };
            *sum = _mm256_fmadd_ps(x, y, *sum);
        }
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: lanes holds exactly eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    let done = blocks * 32;
    lanes.iter().sum::<f32>() + dot_portable(&a[done..], &b[done..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_with_the_definition() {
        for len in [0, 1, 7, 8, 31, 32, 33, 384, 1000] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0)
                .collect();
            let expected: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum();
            assert!((dot(&a, &b) as f64 - expected).abs() < 1e-4, "len {len}");
            assert!(
                (dot_portable(&a, &b) as f64 - expected).abs() < 1e-4,
                "len {len}"
            );
        }
    }
}
