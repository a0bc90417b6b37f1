//! Special functions the RDP accountant needs and `std` lacks: `erfc`, `log(erfc)`, and log-space addition.
//!
//! The crate takes no special-function dependency, so `erfc` is a port of the FreeBSD msun implementation
//! (`s_erf.c`, via musl and the `libm` crate), accurate to about one ulp. `log_erfc` reuses its rational
//! approximations in log space so that it stays accurate far into the tail, where `erfc` itself underflows.

// The coefficients are msun's decimal literals, kept digit for digit so they can be checked against the source; they
// carry more digits than an f64 holds, and round to the exact bit patterns msun documents.
#![allow(clippy::excessive_precision)]

// The algorithm and coefficients below come from FreeBSD /usr/src/lib/msun/src/s_erf.c, whose notice follows.
/*
 * ====================================================
 * Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
 *
 * Developed at SunPro, a Sun Microsystems, Inc. business.
 * Permission to use, copy, modify, and distribute this
 * software is freely granted, provided that this notice
 * is preserved.
 * ====================================================
 */

/// The complementary error function, `erfc(x) = 1 − erf(x)`, to about one ulp.
///
/// `erfc(−∞) = 2`, `erfc(+∞) = 0`, NaN gives NaN; results below the smallest normal `f64` (x ≳ 26.5) lose
/// precision and reach 0 at x ≈ 27.3. Use [`log_erfc`] in the tail.
pub(crate) fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let abs_x = x.abs();
    if abs_x < 0.84375 {
        if abs_x < TINY {
            return 1.0 - x;
        }
        let y = erf_small_ratio(x * x);
        // For x in [1/4, 0.84375) this arrangement keeps the subtraction exact (msun's comment: "x < 1/4").
        return if x < 0.25 { 1.0 - (x + x * y) } else { 0.5 - (x - 0.5 + x * y) };
    }
    if abs_x < 28.0 {
        let tail = if abs_x < 1.25 { 1.0 - ERX - erf_near_one(abs_x) } else { erfc_tail(abs_x) };
        return if x < 0.0 { 2.0 - tail } else { tail };
    }
    if x < 0.0 { 2.0 } else { 0.0 }
}

/// `ln(erfc(x))`, accurate to a few ulps (absolute, relative to `max(1, |ln erfc x|)`) for every `x`.
///
/// Below 1.25 it is `erfc(x).ln()`; from 1.25 to 28 it evaluates msun's tail approximation
/// `erfc(x) = exp(−x² − 0.5625 + R/S) / x` directly in log space; beyond 28 it uses the asymptotic series
/// `ln erfc(x) ≈ −x² − ln(x√π) − 1/(2x²) + 5/(8x⁴) − 37/(24x⁶) + 353/(64x⁸)`, exactly as Google's
/// `dp_accounting` falls back to (its truncation error there is below 1e-13).
pub(crate) fn log_erfc(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x < 1.25 {
        return erfc(x).ln();
    }
    if x == f64::INFINITY {
        return f64::NEG_INFINITY;
    }
    if x < 28.0 {
        let (ratio, z) = erfc_tail_parts(x);
        // -x² = -z² + (z - x)(z + x), with z² exact because z has only 21 significant bits.
        return -z * z - 0.5625 + (z - x) * (z + x) + ratio - x.ln();
    }
    let inv_x2 = 1.0 / (x * x);
    -0.5 * std::f64::consts::PI.ln() - x.ln() - x * x
        + inv_x2 * (-0.5 + inv_x2 * (0.625 + inv_x2 * (-37.0 / 24.0 + inv_x2 * (353.0 / 64.0))))
}

/// `ln(eˣ + eʸ)` without overflow; `−∞` stands for 0.
pub(crate) fn log_add(log_x: f64, log_y: f64) -> f64 {
    let (small, large) = if log_x < log_y { (log_x, log_y) } else { (log_y, log_x) };
    if small == f64::NEG_INFINITY {
        return large;
    }
    // e^a + e^b = (e^(a-b) + 1) · e^b
    (small - large).exp().ln_1p() + large
}

/// Below 2⁻⁵⁶, `erfc(x)` rounds to `1 − x`.
const TINY: f64 = 1.0 / (1u64 << 56) as f64;

/// erf(1) rounded to single precision; `erf(1 + s) = ERX + P1(s)/Q1(s)` on [0.84375, 1.25].
const ERX: f64 = 8.45062911510467529297e-01;

/// `R(x²)` with `erf(x) = x + x·R(x²)` on [0, 0.84375].
fn erf_small_ratio(z: f64) -> f64 {
    const PP: [f64; 5] = [
        1.28379167095512558561e-01,
        -3.25042107247001499370e-01,
        -2.84817495755985104766e-02,
        -5.77027029648944159157e-03,
        -2.37630166566501626084e-05,
    ];
    const QQ: [f64; 5] = [
        3.97917223959155352819e-01,
        6.50222499887672944485e-02,
        5.08130628187576562776e-03,
        1.32494738004321644526e-04,
        -3.96022827877536812320e-06,
    ];
    polynomial(z, &PP) / (1.0 + z * polynomial(z, &QQ))
}

/// `P1(s)/Q1(s)` with `s = x − 1`, so that `erf(x) = ERX + P1/Q1` on [0.84375, 1.25].
fn erf_near_one(abs_x: f64) -> f64 {
    const PA: [f64; 7] = [
        -2.36211856075265944077e-03,
        4.14856118683748331666e-01,
        -3.72207876035701323847e-01,
        3.18346619901161753674e-01,
        -1.10894694282396677476e-01,
        3.54783043256182359371e-02,
        -2.16637559486879084300e-03,
    ];
    const QA: [f64; 6] = [
        1.06420880400844228286e-01,
        5.40397917702171048937e-01,
        7.18286544141962662868e-02,
        1.26171219808761642112e-01,
        1.36370839120290507362e-02,
        1.19844998467991074170e-02,
    ];
    let s = abs_x - 1.0;
    polynomial(s, &PA) / (1.0 + s * polynomial(s, &QA))
}

/// `erfc(x)` for x in [1.25, 28).
fn erfc_tail(x: f64) -> f64 {
    let (ratio, z) = erfc_tail_parts(x);
    // exp(-x²) split as exp(-z²)·exp((z-x)(z+x)) so the large part of the exponent is exact.
    (-z * z - 0.5625).exp() * ((z - x) * (z + x) + ratio).exp() / x
}

/// For x in [1.25, 28): `R/S` with `erfc(x) = exp(−x² − 0.5625 + R/S) / x`, and `x` with its low 32 bits cleared.
fn erfc_tail_parts(x: f64) -> (f64, f64) {
    // On [1.25, 1/0.35].
    const RA: [f64; 8] = [
        -9.86494403484714822705e-03,
        -6.93858572707181764372e-01,
        -1.05586262253232909814e+01,
        -6.23753324503260060396e+01,
        -1.62396669462573470355e+02,
        -1.84605092906711035994e+02,
        -8.12874355063065934246e+01,
        -9.81432934416914548592e+00,
    ];
    const SA: [f64; 8] = [
        1.96512716674392571292e+01,
        1.37657754143519042600e+02,
        4.34565877475229228821e+02,
        6.45387271733267880336e+02,
        4.29008140027567833386e+02,
        1.08635005541779435134e+02,
        6.57024977031928170135e+00,
        -6.04244152148580987438e-02,
    ];
    // On [1/0.35, 28].
    const RB: [f64; 7] = [
        -9.86494292470009928597e-03,
        -7.99283237680523006574e-01,
        -1.77579549177547519889e+01,
        -1.60636384855821916062e+02,
        -6.37566443368389627722e+02,
        -1.02509513161107724954e+03,
        -4.83519191608651397019e+02,
    ];
    const SB: [f64; 7] = [
        3.03380607434824582924e+01,
        3.25792512996573918826e+02,
        1.53672958608443695994e+03,
        3.19985821950859553908e+03,
        2.55305040643316442583e+03,
        4.74528541206955367215e+02,
        -2.24409524465858183362e+01,
    ];
    let s = 1.0 / (x * x);
    // msun compares the high word against 0x4006db6d, i.e. x < 1/0.35 ≈ 2.857142857.
    let ratio = if (x.to_bits() >> 32) < 0x4006_db6d {
        polynomial(s, &RA) / (1.0 + s * polynomial(s, &SA))
    } else {
        polynomial(s, &RB) / (1.0 + s * polynomial(s, &SB))
    };
    let z = f64::from_bits(x.to_bits() & 0xffff_ffff_0000_0000);
    (ratio, z)
}

/// `c₀ + c₁x + c₂x² + …` by Horner's rule.
fn polynomial(x: f64, coefficients: &[f64]) -> f64 {
    coefficients.iter().rev().fold(0.0, |acc, &c| acc * x + c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from `scipy.special.erfc` (SciPy 1.x, Cephes), printed with `repr`.
    const ERFC_REFERENCE: [(f64, f64); 14] = [
        (-5.0, 1.9999999999984626),
        (-1.0, 1.8427007929497148),
        (0.0, 1.0),
        (0.1, 0.8875370839817152),
        (0.3, 0.6713732405408726),
        (0.5, 0.4795001221869535),
        (0.84, 0.23485728854500554),
        (1.0, 0.15729920705028516),
        (1.3, 0.06599205505934758),
        (2.0, 0.004677734981047266),
        (2.9, 4.109787809945884e-05),
        (5.0, 1.5374597944280347e-12),
        (10.0, 2.0884875837625446e-45),
        (26.5, 2.2109076642637343e-307),
    ];

    /// Reference values from `dp_accounting.rdp.rdp_privacy_accountant._log_erfc` (dp-accounting 0.6.0, which
    /// computes `log(2) + scipy.special.log_ndtr(-x·√2)`).
    const LOG_ERFC_REFERENCE: [(f64, f64); 10] = [
        (-3.0, 0.6931361352504468),
        (0.5, -0.7350111298370848),
        (1.3, -2.718220922090385),
        (2.9, -10.099554065545236),
        (5.0, -27.200889545537446),
        (27.9, -782.3116329385364),
        (28.1, -793.5187667439474),
        (30.0, -903.9741171106442),
        (100.0, -10005.177585122668),
        (10000.0, -100000009.78270535),
    ];

    fn assert_close(actual: f64, expected: f64, relative: f64) {
        let error = (actual - expected).abs() / expected.abs().max(f64::MIN_POSITIVE);
        assert!(error <= relative, "got {actual:e}, expected {expected:e} (relative error {error:e})");
    }

    #[test]
    fn erfc_matches_reference() {
        for (x, expected) in ERFC_REFERENCE {
            // Past x ≈ 26.5 the value is subnormal-adjacent and only ~1e-12 relative is meaningful.
            let tolerance = if x > 20.0 { 1e-12 } else { 4e-16 * 8.0 };
            assert_close(erfc(x), expected, tolerance);
        }
    }

    #[test]
    fn erfc_edge_cases() {
        assert_eq!(erfc(f64::INFINITY), 0.0);
        assert_eq!(erfc(f64::NEG_INFINITY), 2.0);
        assert_eq!(erfc(40.0), 0.0);
        assert_eq!(erfc(-40.0), 2.0);
        assert!(erfc(f64::NAN).is_nan());
        assert_eq!(erfc(1e-300), 1.0);
    }

    #[test]
    fn erfc_is_decreasing_across_branch_boundaries() {
        for boundary in [0.25, 0.84375, 1.25, 1.0 / 0.35, 28.0] {
            let below = erfc(boundary * (1.0 - 1e-12));
            let above = erfc(boundary * (1.0 + 1e-12));
            assert!(below >= above, "erfc not decreasing at {boundary}");
            assert_close(above, below, 1e-10);
        }
    }

    #[test]
    fn log_erfc_matches_reference() {
        for (x, expected) in LOG_ERFC_REFERENCE {
            assert_close(log_erfc(x), expected, 1e-14);
        }
    }

    #[test]
    fn log_erfc_agrees_with_erfc_where_both_are_representable() {
        let mut x = -6.0;
        while x < 26.0 {
            assert_close(log_erfc(x), erfc(x).ln(), 1e-13);
            x += 0.173;
        }
    }

    #[test]
    fn log_erfc_is_continuous_at_the_asymptotic_switch() {
        assert_close(log_erfc(28.0 * (1.0 - 1e-15)), log_erfc(28.0), 1e-14);
        assert_eq!(log_erfc(f64::INFINITY), f64::NEG_INFINITY);
        assert_eq!(log_erfc(f64::NEG_INFINITY), std::f64::consts::LN_2);
        assert!(log_erfc(f64::NAN).is_nan());
    }

    #[test]
    fn log_add_adds_in_log_space() {
        assert_close(log_add(2f64.ln(), 3f64.ln()), 5f64.ln(), 1e-15);
        assert_eq!(log_add(f64::NEG_INFINITY, 1.5), 1.5);
        assert_eq!(log_add(1.5, f64::NEG_INFINITY), 1.5);
        assert_eq!(log_add(f64::NEG_INFINITY, f64::NEG_INFINITY), f64::NEG_INFINITY);
        // No overflow where e^x would be infinite.
        assert_close(log_add(1000.0, 1000.0), 1000.0 + 2f64.ln(), 1e-15);
    }
}
