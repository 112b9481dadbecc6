//! Fitted spill models, written by `kernelgen calibrate --write` from the committed oracle data.
//! Do not edit by hand: `spill_constants_match_a_refit_of_the_data` keeps them equal to a refit.

use super::spill::{Kernel, SpillModel};

pub const FITTED: &[(Kernel, &str, SpillModel)] = &[];
