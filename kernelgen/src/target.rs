//! TPU generations: on-chip memory sizes, default scoped-VMEM limit, and Mosaic's tiling rule.
//!
//! Sources, cited per figure:
//! - [info]: jax 0.12.0.1 `jax/_src/tpu_info.py` (`vmem_capacity_bytes`, `smem_capacity_bytes`,
//!   `get_sublane_tiling`), read from the installed oracle venv;
//! - [oracle]: measured with the deviceless TPU compiler (jax 0.12.0.1 + libtpu 0.0.50.1,
//!   `verify/oracle/tpu_oracle.py`): the limit printed in `CompileTimeScopedVmemOom` errors for a
//!   kernel that sets no `vmem_limit_bytes`, and SMEM capacity errors.

use crate::config::{ConfigError, Dtype};
use serde::Serialize;
use std::fmt;

pub const MIB: u64 = 1 << 20;

/// One TPU generation, per TensorCore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub name: &'static str,
    /// Topology name of a compile-only device for the oracle.
    pub topology: &'static str,
    pub generation: u8,
    /// Physical VMEM per core: the ceiling for `vmem_limit_bytes`.
    pub vmem_bytes: u64,
    /// Limit a kernel gets when it sets no `vmem_limit_bytes`.
    pub default_scoped_vmem_bytes: u64,
    pub smem_bytes: u64,
    /// HBM of one JAX device (a megacore chip for v4/v5p, one TensorCore for v7x).
    pub hbm_bytes: u64,
    /// Mosaic's "internal scratch" VMEM allocation, present in every Pallas kernel.
    pub internal_scratch_bytes: u64,
    /// Rows per tile of a 16-bit array's second-minor dimension in VMEM scratch.
    pub bf16_sublane_tile: u64,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "v4",
        topology: "v4:2x2x1",
        generation: 4,
        vmem_bytes: 16 * MIB, // [info] 16 MiB per core
        // [oracle] v4 reports overflow as "Used 19.95M of 16.00M vmem" (capacity): no separate
        // scoped default below physical VMEM; a 13.2 MiB kernel compiles with no limit set.
        default_scoped_vmem_bytes: 16 * MIB,
        smem_bytes: MIB,                   // [info] 1 MiB per core
        hbm_bytes: 34_400_000_000,         // [info] per chip (megacore device)
        internal_scratch_bytes: 36 * 1024, // [oracle] jf dump: u32[72,128] 'internal scratch'
        bf16_sublane_tile: 8, // [info] get_sublane_tiling: num_sublanes (8) before TPU7x
    },
    Target {
        name: "v5e",
        topology: "v5e=1x1",
        generation: 5,
        vmem_bytes: 128 * MIB,               // [info]
        default_scoped_vmem_bytes: 16 * MIB, // [oracle] "limit 16.00M"
        smem_bytes: MIB,                     // [info]
        hbm_bytes: 17_200_000_000,           // [info]
        internal_scratch_bytes: 36 * 1024,   // [oracle] jf dump: u32[72,128]
        bf16_sublane_tile: 8,                // [info]
    },
    Target {
        name: "v5p",
        topology: "v5p=1x1x1",
        generation: 5,
        vmem_bytes: 64 * MIB, // [info]; compiler: "would exceed memory (size=67108864)"
        default_scoped_vmem_bytes: 16 * MIB, // [oracle] "limit 16.00M"
        smem_bytes: MIB,      // [info]
        hbm_bytes: 103_000_000_000, // [info] per chip (megacore device)
        internal_scratch_bytes: 36 * 1024, // [oracle] jf dump: u32[72,128]
        bf16_sublane_tile: 8, // [info]
    },
    Target {
        name: "v6e",
        topology: "v6e=1x1",
        generation: 6,
        vmem_bytes: 128 * MIB,               // [info]
        default_scoped_vmem_bytes: 32 * MIB, // [oracle] "limit 32.00M"
        smem_bytes: MIB,                     // [info]; [oracle] "Used 1.00M of 1.00M smem"
        hbm_bytes: 34_400_000_000,           // [info]
        internal_scratch_bytes: 72 * 1024,   // [oracle] jf dump: u32[144,128]
        bf16_sublane_tile: 8,                // [info]
    },
    Target {
        name: "v7x",
        topology: "tpu7x:2x2x1",
        generation: 7,
        vmem_bytes: 64 * MIB,                // [info]
        default_scoped_vmem_bytes: 32 * MIB, // [oracle] "limit 32.00M"
        smem_bytes: MIB,                     // [info]
        hbm_bytes: 103_000_000_000,          // [info] 206 GB per chip / 2 TensorCores
        internal_scratch_bytes: 72 * 1024,   // [oracle] jf dump: u32[144,128]
        bf16_sublane_tile: 16, // [info] large 2nd-minor tiling is the default from TPU7x
    },
];

impl Target {
    pub fn find(name: &str) -> Result<Target, ConfigError> {
        let n = name.to_ascii_lowercase();
        let n = match n.as_str() {
            "tpu7x" | "v7" => "v7x",
            "v5litepod" | "v5lite" => "v5e",
            other => other,
        };
        TARGETS
            .iter()
            .find(|t| t.name == n)
            .copied()
            .ok_or_else(|| {
                ConfigError::field(
                    "target",
                    name,
                    format!(
                        "one of {}",
                        TARGETS
                            .iter()
                            .map(|t| t.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    /// Mosaic's tile for the second-minor dimension `rows` of a VMEM array of `dtype`: the
    /// smallest power of two >= `rows`, capped at 8 rows for 32-bit types and at the target's
    /// 16-bit sublane tile; 16-bit arrays start at 2 rows (two values share a 32-bit sublane).
    /// Mirrors `_get_tiling_factor` in jax's `tpu_info.py` (from Mosaic's infer-memref-layout).
    pub fn sublane_tile(&self, dtype: Dtype, rows: u64) -> u64 {
        let (start, cap) = match dtype {
            Dtype::F32 => (1, 8),
            Dtype::Bf16 => (2, self.bf16_sublane_tile),
        };
        let mut tile = start;
        while tile < rows.min(cap) {
            tile *= 2;
        }
        tile
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Parses a byte size: `16MiB`, `16M` (MiB), `512KiB`, `1.5GiB`, `33554432`.
pub fn parse_bytes(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" | "kb" => 1024.0,
        "m" | "mib" | "mb" => 1024.0 * 1024.0,
        "g" | "gib" | "gb" => 1024.0 * 1024.0 * 1024.0,
        _ => f64::NAN,
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && mult.is_finite() && (v * mult) < 1e15 => Ok((v * mult).round() as u64),
        _ => Err(ConfigError::field(
            "vmem_limit",
            s,
            "a positive size such as 32MiB, 16M, 512KiB or 33554432 (bytes)",
        )),
    }
}

/// `17600512` -> `16.79 MiB`.
pub fn fmt_bytes(b: u64) -> String {
    if b >= 1024 * MIB {
        format!("{:.2} GiB", b as f64 / (1024 * MIB) as f64)
    } else if b >= MIB {
        format!("{:.2} MiB", b as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// Bytes as the TPU compiler prints them in its scoped-allocation errors (`16.79M`, `804.0K`,
/// `512B`): base 1024, one decimal for K, two for M and above.
pub fn fmt_compiler_bytes(b: u64) -> String {
    let x = b as f64;
    if b < 1024 {
        format!("{b}B")
    } else if x < 1024.0 * 1024.0 {
        format!("{:.1}K", x / 1024.0)
    } else if x < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}M", x / (1024.0 * 1024.0))
    } else {
        format!("{:.2}G", x / (1024.0 * 1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_byte_strings() {
        // From the compiler's message for the v5p llama3-8b page 128 config: "Scoped allocation with
        // size 16.79M and limit 16.00M exceeded scoped vmem limit by 804.0K."
        let size = 16 * MIB + 3 * 256 * 1024 + 36 * 1024;
        assert_eq!(fmt_compiler_bytes(size), "16.79M");
        assert_eq!(fmt_compiler_bytes(16 * MIB), "16.00M");
        assert_eq!(fmt_compiler_bytes(size - 16 * MIB), "804.0K");
        assert_eq!(fmt_compiler_bytes(512), "512B");
    }

    #[test]
    fn tiles_follow_mosaic_rule() {
        let v5p = Target::find("v5p").unwrap();
        let v7x = Target::find("tpu7x").unwrap();
        assert_eq!(v5p.sublane_tile(Dtype::F32, 3), 4);
        assert_eq!(v5p.sublane_tile(Dtype::F32, 100), 8);
        assert_eq!(v5p.sublane_tile(Dtype::Bf16, 1), 2);
        assert_eq!(v5p.sublane_tile(Dtype::Bf16, 4), 4);
        assert_eq!(v5p.sublane_tile(Dtype::Bf16, 16), 8);
        assert_eq!(v7x.sublane_tile(Dtype::Bf16, 16), 16);
    }

    #[test]
    fn sizes_parse_and_bad_ones_name_the_field() {
        assert_eq!(parse_bytes("32MiB").unwrap(), 32 * MIB);
        assert_eq!(parse_bytes("16M").unwrap(), 16 * MIB);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 * 512 * MIB);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots")
            .unwrap_err()
            .to_string()
            .contains("vmem_limit"));
        assert!(parse_bytes("-1M").is_err());
        assert!(Target::find("v9")
            .unwrap_err()
            .to_string()
            .contains("v4, v5e, v5p, v6e, v7x"));
    }
}
