//! OpenDP's Gaussian measurements on `f64`, shared by the one-shot releases of [`crate::stats`] and
//! [`crate::central`].
//!
//! Both build `opendp::measurements::make_gaussian` with the zero-concentrated-divergence output measure at OpenDP's
//! default granularity for `f64` (2⁻¹⁰⁷⁴, the spacing of subnormals), so that no sensitivity is lost to rounding
//! the input onto the noise grid: OpenDP's privacy map is then exactly ρ = Δ² / (2·scale²), rounded up. Sampling an
//! exact discrete Gaussian on that grid takes arbitrary-precision arithmetic, about 45 µs per coordinate on the
//! development machine; that is fine for a statistic or a round's aggregate, not for per-step DP-SGD noise.

use opendp::combinators::make_zCDP_to_approxDP;
use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::{AbsoluteDistance, L2Distance};

use crate::{Error, Result};

/// `1 + 2⁻⁴⁰`: sensitivities and noise scales are multiplied by this so that the few `f64` roundings in computing
/// them (each at most 2⁻⁵³ relative) can never leave a sensitivity below its exact value or a scale below
/// `noise_multiplier × sensitivity`. It costs a relative 10⁻¹² of noise.
pub(crate) const NOISE_MARGIN: f64 = 1.0 + 1.0 / (1u64 << 40) as f64;

/// OpenDP's Gaussian mechanism on `f64` vectors: L2 sensitivity in, zCDP ρ out.
pub(crate) type VectorGaussian =
    Measurement<VectorDomain<AtomDomain<f64>>, L2Distance<f64>, ZeroConcentratedDivergence, Vec<f64>>;

/// OpenDP's Gaussian mechanism on one `f64`: absolute sensitivity in, zCDP ρ out.
pub(crate) type ScalarGaussian = Measurement<AtomDomain<f64>, AbsoluteDistance<f64>, ZeroConcentratedDivergence, f64>;

/// The Gaussian measurement with standard deviation `scale` on non-NaN `f64` vectors under the L2 distance.
pub(crate) fn vector_gaussian(scale: f64) -> Result<VectorGaussian> {
    let input_domain = VectorDomain::new(AtomDomain::<f64>::new_non_nan());
    make_gaussian::<_, _, ZeroConcentratedDivergence>(input_domain, L2Distance::<f64>::default(), scale, None)
        .map_err(opendp_error)
}

/// The Gaussian measurement with standard deviation `scale` on one non-NaN `f64` under the absolute distance.
pub(crate) fn scalar_gaussian(scale: f64) -> Result<ScalarGaussian> {
    make_gaussian::<_, _, ZeroConcentratedDivergence>(
        AtomDomain::<f64>::new_non_nan(),
        AbsoluteDistance::<f64>::default(),
        scale,
        None,
    )
    .map_err(opendp_error)
}

/// Replaces every entry of `values` by itself plus exact N(0, `scale`²) noise; `values` is unchanged on error.
///
/// The caller guarantees that the entries are finite (OpenDP would silently replace a NaN by 0).
pub(crate) fn add_exact_f64(values: &mut [f64], scale: f64) -> Result<()> {
    let noisy = vector_gaussian(scale)?.invoke(&values.to_vec()).map_err(opendp_error)?;
    if noisy.len() != values.len() {
        return Err(Error::OpenDp {
            message: format!("measurement returned {} values for {} inputs", noisy.len(), values.len()),
        });
    }
    values.copy_from_slice(&noisy);
    Ok(())
}

/// `value` plus exact N(0, `scale`²) noise; the caller guarantees that `value` is finite.
pub(crate) fn exact_scalar(value: f64, scale: f64) -> Result<f64> {
    scalar_gaussian(scale)?.invoke(&value).map_err(opendp_error)
}

/// OpenDP's zCDP ρ for the vector Gaussian with standard deviation `scale` at L2 sensitivity `sensitivity`.
pub(crate) fn zcdp_rho(scale: f64, sensitivity: f64) -> Result<f64> {
    vector_gaussian(scale)?.map(&sensitivity).map_err(opendp_error)
}

/// OpenDP's ε at `delta` for the same release, through its zCDP → approximate-DP conversion
/// (`make_zCDP_to_approxDP`, Canonne, Kamath and Steinke 2020, minimised over every real order).
pub(crate) fn epsilon(scale: f64, sensitivity: f64, delta: f64) -> Result<f64> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(Error::InvalidDelta { delta });
    }
    let profile = make_zCDP_to_approxDP(vector_gaussian(scale)?).map_err(opendp_error)?.map(&sensitivity);
    profile.map_err(opendp_error)?.epsilon(delta).map_err(opendp_error)
}

/// OpenDP's error, rendered: its type carries a backtrace and is neither `Clone` nor `PartialEq`.
pub(crate) fn opendp_error(error: opendp::error::Error) -> Error {
    Error::OpenDp { message: error.to_string() }
}
