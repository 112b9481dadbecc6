//! VMEM (and SMEM) budget checker: an itemized, tile-padded account of every on-chip buffer a
//! ragged paged attention kernel allocates on a TPU target, and a verdict before any compile.
//!
//! The VMEM formula of each kernel lives in one file: [`jax_rpa`] (JAX's Pallas TPU
//! `ragged_paged_attention`) and [`kernelgen_rpa`] (the Pallas kernel kernelgen emits). Each
//! buffer there carries its kernel buffer name, shape and padding rule. Register spills, which
//! the compiler also allocates in scoped VMEM, are not a closed form: [`spill`] holds the
//! allowance fitted to the real TPU compiler (data in `kernelgen/data/`), with its measured error,
//! which becomes the `uncertain` band around the limit.

pub mod calibrate;
pub mod explain;
pub mod jax_rpa;
pub mod kernelgen_rpa;
pub mod matrix;
pub mod request;
pub mod smem;
pub mod spill;
mod spill_fitted;
pub mod suggest;

use crate::config::{Dtype, KernelConfig};
use crate::target::{fmt_bytes, Target};
use serde::{Deserialize, Serialize, Serializer};
use smallvec::SmallVec;
use std::fmt;

/// Which kernel's allocations to account (and to fit register spills for, and to compile with
/// the TPU compiler): the one kernel enum of the checker, the calibration and the oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelModel {
    /// `jax.experimental.pallas.ops.tpu.ragged_paged_attention` (jax 0.12).
    JaxRpa,
    /// The Pallas TPU kernel `kernelgen build --emit tpu` writes (`rpa.pallas.py`).
    Kernelgen,
}

impl KernelModel {
    pub fn parse(s: &str) -> Result<KernelModel, crate::config::ConfigError> {
        match s {
            "jax-rpa" => Ok(KernelModel::JaxRpa),
            "kernelgen" => Ok(KernelModel::Kernelgen),
            _ => Err(crate::config::ConfigError::field(
                "kernel",
                s,
                "one of jax-rpa, kernelgen",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelModel::JaxRpa => "jax-rpa",
            KernelModel::Kernelgen => "kernelgen",
        }
    }
}

/// An array's dims as a report holds them: inline up to rank 6 (the buffers of both kernels have
/// rank 5 at most), so accounting a config puts no shape on the heap. Serializes as a list.
pub type Dims = SmallVec<[u64; 6]>;

/// One VMEM allocation, itemized.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Buffer {
    /// Name in the kernel source (`kv_bufs`, `l_ref`, ...).
    pub name: &'static str,
    pub what: &'static str,
    pub dtype: &'static str,
    /// Logical shape of one copy, including the copy axis where the kernel has one.
    pub shape: Dims,
    /// Shape after Mosaic's padding (minor dim to 128 lanes, second-minor to the dtype's tile).
    pub padded_shape: Dims,
    /// Separate copies the compiler allocates (2 for pipelined windows).
    pub copies: u64,
    pub bytes: u64,
    /// False for the fitted spill allowance.
    pub exact: bool,
}

/// How VMEM bytes of an array are counted: padding of the last two dims, times element size.
pub fn padded(target: &Target, dtype: Dtype, shape: &[u64]) -> (Dims, u64) {
    let mut p = Dims::from_slice(shape);
    let n = p.len();
    if n >= 1 {
        p[n - 1] = p[n - 1].div_ceil(128) * 128;
    }
    if n >= 2 {
        let tile = target.sublane_tile(dtype, p[n - 2]);
        p[n - 2] = p[n - 2].div_ceil(tile) * tile;
    }
    let bytes = p.iter().product::<u64>() * dtype.bytes();
    (p, bytes)
}

/// An exactly-sized buffer of `copies` copies of `shape`.
pub fn buffer(
    target: &Target,
    name: &'static str,
    what: &'static str,
    dtype: Dtype,
    shape: &[u64],
    copies: u64,
) -> Buffer {
    let (padded_shape, bytes) = padded(target, dtype, shape);
    Buffer {
        name,
        what,
        dtype: dtype.mlir(),
        shape: Dims::from_slice(shape),
        padded_shape,
        copies,
        bytes: bytes * copies,
        exact: true,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Fits,
    DoesNotFit,
    /// Within the spill model's measured error of the limit: ask the oracle.
    Uncertain,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Fits => "fits",
            Verdict::DoesNotFit => "does not fit",
            Verdict::Uncertain => "uncertain",
        })
    }
}

/// Where the limit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    /// The target's default scoped limit (no `vmem_limit_bytes`).
    TargetDefault,
    /// `--vmem-limit` / `vmem_limit_bytes`.
    Explicit,
}

/// The checker's account of one kernel config on one target.
#[derive(Clone, Debug, Serialize)]
pub struct VmemReport {
    pub kernel: KernelModel,
    pub target: &'static str,
    /// The config checked (one device's heads); serialized as its one-line text.
    #[serde(serialize_with = "as_text")]
    pub config: KernelConfig,
    pub buffers: Vec<Buffer>,
    /// Sum of the exact buffers (kernel scratch, windows, internal scratch).
    pub explicit_bytes: u64,
    /// Estimated peak scoped VMEM: explicit buffers + spill allowance.
    pub total_bytes: u64,
    /// The spill model's error bound around `total_bytes`.
    pub uncertainty_bytes: u64,
    /// The need lies in `[lower_bytes, upper_bytes]`: fits if upper <= limit, does not fit if
    /// lower > limit, else uncertain. Lower is never below the exact buffers (spills only add);
    /// upper is unbounded (`None`) without a spill calibration.
    pub lower_bytes: u64,
    pub upper_bytes: Option<u64>,
    pub limit_bytes: u64,
    pub limit_source: LimitSource,
    /// `limit - total` (negative when it does not fit).
    pub margin_bytes: i64,
    pub vmem_verdict: Verdict,
    pub smem: smem::SmemReport,
    /// The kernel's operands (q, kv_pages, output, index arrays) against the device's HBM.
    pub hbm: HbmReport,
    /// Overall: the worse of VMEM and SMEM.
    pub verdict: Verdict,
    /// The compiler's first scoped-allocation check: see [`ScopedAllocation`].
    pub scoped: ScopedAllocation,
    /// Adjustments made to match what the kernel actually runs (clamps, head blocks, padding).
    pub notes: Vec<Note>,
}

fn as_text<S: Serializer>(v: &impl fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A remark on a report: an adjustment made to match what the kernel runs, or a limit of the
/// spill calibration. Held as data and worded only when printed or serialized (as a string), so
/// checking a grid of configs words none of them.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// How the request became one device's config (clamps, tensor parallelism): see
    /// [`request::resolve`], which words it once per request.
    Request(String),
    /// JAX's kernel: heads per block as its `get_min_heads_per_blk` picks them.
    JaxHeads {
        q: u64,
        combined_kv: u64,
        blocks: u64,
    },
    /// JAX's kernel with a head_dim other than 128.
    JaxHeadDim(u64),
    /// kernelgen's kernel: heads per block and the query rows folded onto each KV head.
    KernelgenHeads {
        q: u64,
        kv: u64,
        blocks: u64,
        rows: u64,
    },
    /// kernelgen's kernel with a head_dim under 128.
    KernelgenNarrowHeadDim(u64),
    /// The config's rows x keys lie beyond the spill calibration of `kernel` on `target`.
    OutsideCalibration {
        kernel: KernelModel,
        target: &'static str,
        rows: u64,
        keys: u64,
        max_rows: u64,
        max_keys: u64,
    },
    /// No spill calibration for `kernel` on `target`.
    Uncalibrated {
        kernel: KernelModel,
        target: &'static str,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Request(text) => f.write_str(text),
            Note::JaxHeads {
                q,
                combined_kv,
                blocks,
            } => write!(
                f,
                "heads per block: {q} q / {combined_kv} combined kv (get_min_heads_per_blk), {blocks} head block(s)"
            ),
            Note::JaxHeadDim(d) => write!(
                f,
                "head_dim {d}: the jax kernel is only known to compile for 128 (measured: 256 fails in \
                 tpu.strided_load); serving stacks pad head_dim to 128"
            ),
            Note::KernelgenHeads {
                q,
                kv,
                blocks,
                rows,
            } => write!(
                f,
                "heads per block: {q} q / {kv} KV ({blocks} head block(s)); {rows} folded query rows per KV head"
            ),
            Note::KernelgenNarrowHeadDim(d) => write!(
                f,
                "head_dim {d}: no padding in HBM; each VMEM row still takes 128 lanes (counted)"
            ),
            Note::OutsideCalibration {
                kernel,
                target,
                rows,
                keys,
                max_rows,
                max_keys,
            } => write!(
                f,
                "{rows} rows x {keys} keys per KV head is outside the spill calibration for {} on {target} \
                 (up to {max_rows} rows, {max_keys} keys): the verdict is uncertain unless the exact buffers \
                 alone exceed the limit; use --oracle",
                kernel.name()
            ),
            Note::Uncalibrated { kernel, target } => write!(
                f,
                "no spill calibration for {} on {target}: the verdict is uncertain unless far from the limit; \
                 use --oracle",
                kernel.name()
            ),
        }
    }
}

impl Serialize for Note {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What the TPU compiler allocates in scoped VMEM before anything else: the kernel's scratch
/// operands, then Mosaic's internal scratch. When these alone pass the limit the compile fails
/// with `Scoped allocation with size S and limit L exceeded scoped vmem limit by D`, where S is
/// one of the two sums (on the committed oracle points the compiler printed the scratch
/// operands alone on some targets and with the internal scratch on others: the test
/// `vmem_agreement::the_compilers_scoped_size_is_the_scratch_figure` checks every point). The
/// pipelined windows and the spills come after, so a config under this check can still fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ScopedAllocation {
    /// Scratch operands (KV buffers, softmax state, accumulator).
    pub scratch_bytes: u64,
    /// Mosaic's internal scratch.
    pub internal_bytes: u64,
    /// Whether scratch + internal scratch alone exceed the limit (the compile fails for sure).
    pub exceeds_limit: bool,
}

impl ScopedAllocation {
    /// Scratch operands plus internal scratch.
    pub fn total_bytes(&self) -> u64 {
        self.scratch_bytes + self.internal_bytes
    }

    fn of(buffers: &[Buffer], limit: u64) -> ScopedAllocation {
        let sum = |f: &dyn Fn(&Buffer) -> bool| -> u64 {
            buffers
                .iter()
                .filter(|b| b.exact && f(b))
                .map(|b| b.bytes)
                .sum()
        };
        let internal_bytes = sum(&|b| b.name == "internal scratch");
        let scratch_bytes = sum(&|b| b.name != "internal scratch" && !b.name.contains("window"));
        ScopedAllocation {
            scratch_bytes,
            internal_bytes,
            exceeds_limit: scratch_bytes + internal_bytes > limit,
        }
    }
}

/// HBM the kernel's operands occupy: a call whose arrays do not fit the device cannot run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HbmReport {
    pub operand_bytes: u64,
    pub capacity_bytes: u64,
    pub verdict: Verdict,
}

fn hbm(cfg: &KernelConfig, t: &Target) -> HbmReport {
    let g = cfg.geometry();
    let x = cfg.dtype().bytes();
    let q = cfg.max_num_tokens() as u64 * g.num_q_heads as u64 * g.head_dim as u64 * x;
    let kv = cfg.total_pages() as u64
        * cfg.page_size() as u64
        * 2
        * g.num_kv_heads as u64
        * g.head_dim as u64
        * x;
    let s = cfg.max_num_seqs() as u64;
    let index = 4 * (s + s * cfg.pages_per_seq() as u64 + s + 2);
    let operand_bytes = 2 * q + kv + index;
    HbmReport {
        operand_bytes,
        capacity_bytes: t.hbm_bytes,
        verdict: if operand_bytes <= t.hbm_bytes {
            Verdict::Fits
        } else {
            Verdict::DoesNotFit
        },
    }
}

/// Input to a check: the validated config (heads per device), target, model and limit.
#[derive(Clone, Debug)]
pub struct CheckRequest<'a> {
    pub cfg: &'a KernelConfig,
    pub target: Target,
    pub kernel: KernelModel,
    pub vmem_limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VmemError {
    #[error("{kernel} cannot run this config: {reason}")]
    Unsupported {
        kernel: &'static str,
        reason: String,
    },
    #[error("vmem_limit = {limit} exceeds {target}'s physical VMEM ({physical}); use at most {physical}")]
    LimitAboveCapacity {
        limit: String,
        target: &'static str,
        physical: String,
    },
}

/// What a kernel model contributes: its exact buffers and the features of its spills.
pub struct ModelAccount {
    pub buffers: Vec<Buffer>,
    pub features: spill::SpillFeatures,
    pub notes: Vec<Note>,
}

impl KernelModel {
    /// The exact buffers and spill features of this kernel for `cfg` on `t`.
    pub fn account(self, cfg: &KernelConfig, t: &Target) -> Result<ModelAccount, VmemError> {
        match self {
            KernelModel::JaxRpa => jax_rpa::account(cfg, t),
            KernelModel::Kernelgen => kernelgen_rpa::account(cfg, t),
        }
    }
}

pub(crate) fn verdict(lower: u64, upper: Option<u64>, limit: u64) -> Verdict {
    if upper.is_some_and(|u| u <= limit) {
        Verdict::Fits
    } else if lower > limit {
        Verdict::DoesNotFit
    } else {
        Verdict::Uncertain
    }
}

/// Accounts every buffer of `req.kernel` for `req.cfg` on `req.target` and gives the verdict.
pub fn check(req: &CheckRequest) -> Result<VmemReport, VmemError> {
    let t = &req.target;
    let (limit, limit_source) = match req.vmem_limit {
        Some(l) if l > t.vmem_bytes => {
            return Err(VmemError::LimitAboveCapacity {
                limit: fmt_bytes(l),
                target: t.name,
                physical: fmt_bytes(t.vmem_bytes),
            })
        }
        Some(l) => (l, LimitSource::Explicit),
        None => (t.default_scoped_vmem_bytes, LimitSource::TargetDefault),
    };
    let account = req.kernel.account(req.cfg, t)?;
    let mut notes = account.notes;
    let mut buffers = account.buffers;
    let explicit_bytes: u64 = buffers.iter().map(|b| b.bytes).sum();
    let spill = spill::estimate_with(req.kernel, t, &account.features, explicit_bytes);
    if spill.outside_domain {
        let m = spill.model.expect("a domain comes with a model");
        notes.push(Note::OutsideCalibration {
            kernel: req.kernel,
            target: t.name,
            rows: account.features.rows,
            keys: account.features.keys,
            max_rows: m.max_rows,
            max_keys: m.max_keys,
        });
    } else if spill.model.is_none() {
        notes.push(Note::Uncalibrated {
            kernel: req.kernel,
            target: t.name,
        });
    }
    buffers.push(Buffer {
        name: "spills",
        what: "register spills and vector temporaries (fitted to the TPU compiler)",
        dtype: "u8",
        shape: smallvec::smallvec![spill.bytes],
        padded_shape: smallvec::smallvec![spill.bytes],
        copies: 1,
        bytes: spill.bytes,
        exact: false,
    });
    let scoped = ScopedAllocation::of(&buffers, limit);
    let total_bytes = explicit_bytes + spill.bytes;
    let lower_bytes = spill.lower.max(explicit_bytes);
    let upper_bytes = spill.upper;
    let uncertainty_bytes = upper_bytes.map_or(0, |u| u.saturating_sub(total_bytes));
    let vmem_verdict = verdict(lower_bytes, upper_bytes, limit);
    let smem = smem::account(req.cfg, t, req.kernel);
    let hbm = hbm(req.cfg, t);
    let overall = worst(&[vmem_verdict, smem.verdict, hbm.verdict]);
    Ok(VmemReport {
        kernel: req.kernel,
        target: t.name,
        config: req.cfg.clone(),
        buffers,
        explicit_bytes,
        total_bytes,
        uncertainty_bytes,
        lower_bytes,
        upper_bytes,
        limit_bytes: limit,
        limit_source,
        margin_bytes: limit as i64 - total_bytes as i64,
        vmem_verdict,
        smem,
        hbm,
        verdict: overall,
        scoped,
        notes,
    })
}

/// The worst of several verdicts: does not fit > uncertain > fits.
pub fn worst(vs: &[Verdict]) -> Verdict {
    if vs.contains(&Verdict::DoesNotFit) {
        Verdict::DoesNotFit
    } else if vs.contains(&Verdict::Uncertain) {
        Verdict::Uncertain
    } else {
        Verdict::Fits
    }
}

/// Smallest `vmem_limit_bytes` (rounded up to 1 MiB) the model says fits, if within physical VMEM.
pub fn limit_that_fits(report: &VmemReport, target: &Target) -> Option<u64> {
    let need = report.upper_bytes?;
    let mib = crate::target::MIB;
    let l = need.div_ceil(mib) * mib;
    (l <= target.vmem_bytes).then_some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_matches_compiler_dumps() {
        // shapes and sizes from the TPU compiler's allocation listing (jf dumps, libtpu 0.0.50.1)
        let v5p = crate::target::Target::find("v5p").unwrap();
        let v7x = crate::target::Target::find("v7x").unwrap();
        // kv_bufs bf16[2,4,16,16,128] size 0x80000
        assert_eq!(padded(&v5p, Dtype::Bf16, &[2, 4, 16, 16, 128]).1, 0x80000);
        // kv_bufs bf16[2,4,16,2,128]{T(2,128)(2,1)} size 0x10000 (2 heads not padded to 8)
        assert_eq!(padded(&v7x, Dtype::Bf16, &[2, 4, 16, 2, 128]).1, 0x10000);
        // l/m f32[1,64,128] size 0x8000; acc f32[8,8,128] size 0x8000
        assert_eq!(padded(&v7x, Dtype::F32, &[1, 64, 128]).1, 0x8000);
        assert_eq!(padded(&v7x, Dtype::F32, &[8, 8, 128]).1, 0x8000);
        // head_dim 64 pads to 128 lanes
        assert_eq!(padded(&v5p, Dtype::F32, &[8, 8, 64]).0[..], [8, 8, 128]);
    }

    #[test]
    fn verdict_band() {
        assert_eq!(verdict(85, Some(95), 100), Verdict::Fits);
        assert_eq!(verdict(92, Some(102), 100), Verdict::Uncertain);
        assert_eq!(verdict(101, Some(111), 100), Verdict::DoesNotFit);
        // uncalibrated: only the exact lower bound can decide
        assert_eq!(verdict(50, None, 100), Verdict::Uncertain);
        assert_eq!(verdict(120, None, 100), Verdict::DoesNotFit);
    }
}
