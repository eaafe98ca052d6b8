//! Inner products. f32 for exact search: the scan over every stored vector
//! is memory-bound, so the kernel only has to keep up with memory: AVX2 +
//! FMA when the CPU has them (checked at run time, so one binary runs
//! anywhere), a portable loop that LLVM vectorises otherwise. i8 for the
//! HNSW graph's quantised codes: AVX-512BW or AVX2, chosen once per graph.

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

/// An inner product of two equal-length i8 slices.
pub type DotI8 = fn(&[i8], &[i8]) -> i32;

/// The fastest i8 inner product this CPU runs, picked once so the graph's
/// inner loop does not test CPU features per call.
pub fn dot_i8_kernel() -> DotI8 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw") {
            return dot_i8_avx512_checked;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return dot_i8_avx2_checked;
        }
    }
    dot_i8_portable
}

fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

// Safe entry points: `dot_i8_kernel` hands them out only after checking
// the CPU features they are compiled for.
#[cfg(target_arch = "x86_64")]
fn dot_i8_avx512_checked(a: &[i8], b: &[i8]) -> i32 {
    // SAFETY: selected by `dot_i8_kernel` only when AVX-512BW is present.
    unsafe { dot_i8_avx512(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn dot_i8_avx2_checked(a: &[i8], b: &[i8]) -> i32 {
    // SAFETY: selected by `dot_i8_kernel` only when AVX2 is present.
    unsafe { dot_i8_avx2(a, b) }
}

/// 32 values per step: widened to i16, multiplied and summed in pairs into
/// i32 lanes (`vpmaddwd`), which cannot overflow for i8 inputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn dot_i8_avx512(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let blocks = n / 32;
    let mut acc = _mm512_setzero_si512();
    for block in 0..blocks {
        let at = block * 32;
        // SAFETY: at + 32 <= n for both slices.
        let (x, y) = unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().add(at) as *const __m256i),
                _mm256_loadu_si256(b.as_ptr().add(at) as *const __m256i),
            )
        };
        let products = _mm512_madd_epi16(_mm512_cvtepi8_epi16(x), _mm512_cvtepi8_epi16(y));
        acc = _mm512_add_epi32(acc, products);
    }
    let done = blocks * 32;
    _mm512_reduce_add_epi32(acc) + dot_i8_portable(&a[done..n], &b[done..n])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let blocks = n / 16;
    let mut acc = _mm256_setzero_si256();
    for block in 0..blocks {
        let at = block * 16;
        // SAFETY: at + 16 <= n for both slices.
        let (x, y) = unsafe {
            (
                _mm_loadu_si128(a.as_ptr().add(at) as *const __m128i),
                _mm_loadu_si128(b.as_ptr().add(at) as *const __m128i),
            )
        };
        let products = _mm256_madd_epi16(_mm256_cvtepi8_epi16(x), _mm256_cvtepi8_epi16(y));
        acc = _mm256_add_epi32(acc, products);
    }
    let mut lanes = [0i32; 8];
    // SAFETY: lanes holds exactly eight i32.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
    let done = blocks * 16;
    lanes.iter().sum::<i32>() + dot_i8_portable(&a[done..n], &b[done..n])
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

    #[test]
    fn i8_kernels_agree_with_the_definition() {
        let kernels: Vec<DotI8> = {
            let mut all: Vec<DotI8> = vec![dot_i8_kernel(), dot_i8_portable];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(dot_i8_avx2_checked);
            }
            all
        };
        for len in [0, 1, 15, 16, 31, 32, 33, 384, 1000] {
            // The extremes included: -128 * -128 is the largest product.
            let a: Vec<i8> = (0..len).map(|i| (i * 37 % 256) as u8 as i8).collect();
            let b: Vec<i8> = (0..len).map(|i| (i * 13 % 256) as u8 as i8).collect();
            let expected: i32 = a.iter().zip(&b).map(|(&x, &y)| x as i32 * y as i32).sum();
            let extremes = vec![-128i8; len];
            for kernel in &kernels {
                assert_eq!(kernel(&a, &b), expected, "len {len}");
                assert_eq!(kernel(&extremes, &extremes), 16_384 * len as i32);
            }
        }
    }
}
