//! L2 clipping: bounds each contribution's norm, which is what gives the Gaussian noise its meaning.
//!
//! DP-SGD's guarantee is stated relative to the L2 sensitivity `C`; clipping every per-example gradient (or every
//! client update) to norm `C` is what makes that sensitivity true.

use crate::{Error, Result};

/// The Euclidean norm of `values`, accumulated in `f64`.
///
/// Accumulating in `f64` keeps the norm of a model-sized `f32` vector accurate to about `n · 2⁻⁵³` relative, where
/// an `f32` accumulator would drift by `n · 2⁻²⁴`. A NaN entry gives NaN and an infinite one gives `+inf`.
///
/// ```
/// assert_eq!(pdc_privacy::clip::l2_norm(&[3.0, 4.0]), 5.0);
/// ```
pub fn l2_norm(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
}

/// Scales `values` in place so that their L2 norm is at most `clip_norm`, and returns the norm they had before.
///
/// Vectors already inside the ball are left untouched; longer ones keep their direction and end up with norm at
/// most `clip_norm` (a hair below it, see below). `clip_norm = f64::INFINITY` disables clipping.
///
/// This function is total and fails closed, because its output is about to be released with noise calibrated to
/// `clip_norm`:
/// - a NaN, zero or negative `clip_norm` is treated as 0, so the vector is zeroed;
/// - a vector with a NaN or infinite entry has no meaningful direction and, unless clipping is disabled, is zeroed
///   (the returned norm is then NaN or `+inf`, so the caller can tell).
///
/// Use [`try_clip_l2`] to have those cases reported as errors instead.
///
/// The scale factor is reduced by 2⁻²² relative to `clip_norm / norm` so that rounding the scaled entries to `f32`
/// (at most 2⁻²⁴ relative each) can never push the norm over `clip_norm`: the sensitivity the accountant assumes
/// is an upper bound, not an approximation.
///
/// ```
/// let mut update = [3.0_f32, 4.0];
/// let norm = pdc_privacy::clip::clip_l2(&mut update, 1.0);
/// assert_eq!(norm, 5.0);
/// assert!(pdc_privacy::clip::l2_norm(&update) <= 1.0);
/// ```
pub fn clip_l2(values: &mut [f32], clip_norm: f64) -> f64 {
    let norm = l2_norm(values);
    if clip_norm == f64::INFINITY {
        return norm;
    }
    if clip_norm.is_nan() || clip_norm <= 0.0 || !norm.is_finite() {
        values.fill(0.0);
        return norm;
    }
    if norm > clip_norm {
        let scale = clip_norm / norm * SCALE_MARGIN;
        for value in values.iter_mut() {
            *value = (f64::from(*value) * scale) as f32;
        }
    }
    norm
}

/// Like [`clip_l2`], but refuses a bad `clip_norm` or a non-finite entry instead of zeroing.
///
/// On error `values` is left untouched.
///
/// # Errors
///
/// [`Error::InvalidClipNorm`] if `clip_norm` is NaN, zero or negative; [`Error::NonFiniteValue`] for the first NaN
/// or infinite entry.
///
/// ```
/// use pdc_privacy::{Error, clip::try_clip_l2};
///
/// assert_eq!(try_clip_l2(&mut [1.0], 0.0), Err(Error::InvalidClipNorm { clip_norm: 0.0 }));
/// assert_eq!(try_clip_l2(&mut [3.0, 4.0], 10.0), Ok(5.0));
/// ```
pub fn try_clip_l2(values: &mut [f32], clip_norm: f64) -> Result<f64> {
    if clip_norm.is_nan() || clip_norm <= 0.0 {
        return Err(Error::InvalidClipNorm { clip_norm });
    }
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::NonFiniteValue { index, value });
    }
    Ok(clip_l2(values, clip_norm))
}

/// `1 − 2⁻²²`: leaves room for `f32` rounding of every scaled entry (≤ 2⁻²⁴ relative) and for the `f64` error of the
/// norm itself (≈ `n · 2⁻⁵³`, below 2⁻²⁴ for any vector under 2²⁹ entries).
const SCALE_MARGIN: f64 = 1.0 - 1.0 / (1u64 << 22) as f64;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn norm_of_known_vectors() {
        assert_eq!(l2_norm(&[]), 0.0);
        assert_eq!(l2_norm(&[-3.0, 4.0]), 5.0);
        assert_eq!(l2_norm(&[1.0; 16]), 4.0);
        assert!(l2_norm(&[1.0, f32::NAN]).is_nan());
        assert_eq!(l2_norm(&[1.0, f32::NEG_INFINITY]), f64::INFINITY);
    }

    #[test]
    fn norm_accumulates_in_f64() {
        // 2²⁴ + 1 ones: an f32 accumulator stalls at 2²⁴ and would report 4096 exactly.
        let values = vec![1.0_f32; (1 << 24) + 1];
        let expected = ((1u64 << 24) as f64 + 1.0).sqrt();
        assert_eq!(l2_norm(&values), expected);
        // Squares of large f32 values would overflow an f32 accumulator.
        let (a, b) = (3.0e30_f32, 4.0e30_f32);
        let expected = (f64::from(a).powi(2) + f64::from(b).powi(2)).sqrt();
        assert!(expected.is_finite());
        assert_eq!(l2_norm(&[a, b]), expected);
    }

    #[test]
    fn short_vectors_are_untouched() {
        let mut values = [0.3_f32, -0.4];
        let norm = clip_l2(&mut values, 1.0);
        assert!((norm - 0.5).abs() < 1e-7);
        assert_eq!(values, [0.3, -0.4]);
    }

    #[test]
    fn long_vectors_are_scaled_onto_the_ball() {
        let mut values = [30.0_f32, -40.0];
        assert_eq!(clip_l2(&mut values, 2.0), 50.0);
        let after = l2_norm(&values);
        assert!(after <= 2.0 && after > 2.0 * (1.0 - 1e-6), "norm after clipping: {after}");
        assert!((f64::from(values[0]) / f64::from(values[1]) + 0.75).abs() < 1e-6);
    }

    #[test]
    fn infinite_clip_norm_disables_clipping() {
        let mut values = [1e30_f32, -1e30];
        let norm = clip_l2(&mut values, f64::INFINITY);
        assert!((norm - 2f64.sqrt() * 1e30).abs() / norm < 1e-6);
        assert_eq!(values, [1e30, -1e30]);
        assert_eq!(try_clip_l2(&mut values, f64::INFINITY), Ok(norm));
    }

    #[test]
    fn bad_clip_norms_zero_the_vector() {
        for clip_norm in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            let mut values = [1.0_f32, 2.0];
            clip_l2(&mut values, clip_norm);
            assert_eq!(values, [0.0, 0.0], "clip norm {clip_norm}");
        }
    }

    #[test]
    fn non_finite_entries_zero_the_vector() {
        let mut values = [1.0_f32, f32::NAN];
        assert!(clip_l2(&mut values, 1.0).is_nan());
        assert_eq!(values, [0.0, 0.0]);

        let mut values = [f32::INFINITY, 1.0];
        assert_eq!(clip_l2(&mut values, 1.0), f64::INFINITY);
        assert_eq!(values, [0.0, 0.0]);
    }

    #[test]
    fn checked_variant_reports_and_leaves_values_alone() {
        for clip_norm in [0.0, -2.0, f64::NEG_INFINITY] {
            let mut values = [1.0_f32, 2.0];
            assert_eq!(try_clip_l2(&mut values, clip_norm), Err(Error::InvalidClipNorm { clip_norm }));
            assert_eq!(values, [1.0, 2.0]);
        }
        let mut values = [1.0_f32, 2.0];
        assert!(
            matches!(try_clip_l2(&mut values, f64::NAN), Err(Error::InvalidClipNorm { clip_norm }) if clip_norm.is_nan())
        );

        let mut values = [1.0_f32, 2.0, f32::NEG_INFINITY, f32::NAN];
        assert_eq!(try_clip_l2(&mut values, 1.0), Err(Error::NonFiniteValue { index: 2, value: f32::NEG_INFINITY }));
        assert_eq!(values[..3], [1.0, 2.0, f32::NEG_INFINITY]);
    }

    proptest! {
        #[test]
        fn clipping_bounds_the_norm_and_keeps_the_direction(
            original in prop::collection::vec(-1.0e3_f32..1.0e3, 1..200),
            clip_norm in 1.0e-3_f64..1.0e3,
        ) {
            let mut clipped = original.clone();
            let norm = clip_l2(&mut clipped, clip_norm);
            prop_assert_eq!(norm, l2_norm(&original));

            let after = l2_norm(&clipped);
            prop_assert!(after <= clip_norm * (1.0 + 1e-6));
            // The margin is meant to make the bound hold exactly, not just within 1e-6.
            prop_assert!(after <= clip_norm, "norm {} over clip norm {}", after, clip_norm);

            if norm <= clip_norm {
                prop_assert_eq!(&clipped, &original);
            } else {
                // Same direction: the clipped vector is a positive multiple of the original, i.e. their cosine is 1.
                let dot: f64 = original.iter().zip(&clipped).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let cosine = dot / (norm * after);
                prop_assert!((cosine - 1.0).abs() < 1e-6, "cosine {}", cosine);
                prop_assert!(after >= clip_norm * (1.0 - 1e-6));
                for (&a, &b) in original.iter().zip(&clipped) {
                    prop_assert!(b == 0.0 || a.signum() == b.signum());
                }
            }
        }
    }
}
