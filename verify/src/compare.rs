//! Error metrics between a kernel's output and the f64 reference.

use std::fmt;

/// Worst-case error of `actual` against `expected`.
///
/// `max_rel` is normwise: the largest absolute error divided by the largest reference magnitude.
/// Elementwise relative error is meaningless for outputs near zero, which attention produces
/// whenever values cancel.
#[derive(Clone, Copy, Debug, PartialEq, Default, serde::Serialize)]
pub struct ErrorStats {
    pub max_abs: f64,
    pub max_rel: f64,
    pub ref_max_abs: f64,
    /// Flat index of the element with the largest absolute error.
    pub worst_index: usize,
    pub compared: usize,
    /// Elements of `actual` that are NaN or infinite (any is a failure).
    pub non_finite: usize,
}

impl ErrorStats {
    /// Compares the first `n` elements of `actual` and `expected`.
    pub fn measure(actual: &[f32], expected: &[f64], n: usize) -> ErrorStats {
        let mut s = ErrorStats {
            compared: n,
            ..Default::default()
        };
        for (i, (&a, &e)) in actual[..n].iter().zip(&expected[..n]).enumerate() {
            if !a.is_finite() {
                s.non_finite += 1;
                continue;
            }
            let err = (a as f64 - e).abs();
            if err > s.max_abs {
                s.max_abs = err;
                s.worst_index = i;
            }
            s.ref_max_abs = s.ref_max_abs.max(e.abs());
        }
        s.max_rel = if s.ref_max_abs > 0.0 {
            s.max_abs / s.ref_max_abs
        } else {
            s.max_abs
        };
        s
    }

    /// The worse of two measurements, field by field.
    pub fn merge(self, other: ErrorStats) -> ErrorStats {
        let worst = if other.max_rel > self.max_rel {
            other
        } else {
            self
        };
        ErrorStats {
            max_abs: self.max_abs.max(other.max_abs),
            max_rel: self.max_rel.max(other.max_rel),
            ref_max_abs: self.ref_max_abs.max(other.ref_max_abs),
            worst_index: worst.worst_index,
            compared: self.compared + other.compared,
            non_finite: self.non_finite + other.non_finite,
        }
    }

    /// True when every element is finite and the normwise error is at most `tol`.
    pub fn within(&self, tol: f64) -> bool {
        self.non_finite == 0 && self.max_rel <= tol
    }
}

impl fmt::Display for ErrorStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max abs err {:.3e}, max rel err {:.3e} (normwise, |ref| max {:.3}), {} values",
            self.max_abs, self.max_rel, self.ref_max_abs, self.compared
        )?;
        if self.non_finite > 0 {
            write!(f, ", {} NON-FINITE", self.non_finite)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_normwise_error_and_flags_nan() {
        let s = ErrorStats::measure(&[1.0, 2.5, f32::NAN], &[1.0, 2.0, 0.0], 3);
        assert_eq!(s.max_abs, 0.5);
        assert_eq!(s.max_rel, 0.25);
        assert_eq!(s.worst_index, 1);
        assert_eq!(s.non_finite, 1);
        assert!(!s.within(1.0));
        let clean = ErrorStats::measure(&[1.0, 2.0], &[1.0, 2.0], 2);
        assert!(clean.within(0.0));
        assert_eq!(clean.merge(s).max_rel, 0.25);
    }
}
