//! `xla.CompileOptionsProto`, written by hand with prost derives.
//!
//! Only the fields this project sets are declared; field numbers follow
//! `xla/pjrt/proto/compile_options.proto` in openxla/xla:
//!
//! ```text
//! CompileOptionsProto:          executable_build_options = 3, env_option_overrides = 7
//! ExecutableBuildOptionsProto:  device_ordinal = 1, num_replicas = 4, num_partitions = 5,
//!                               use_spmd_partitioning = 6
//! OptionOverrideProto (oneof):  string_field = 1, bool_field = 2, int_field = 3, double_field = 4
//! ```
//!
//! `env_option_overrides` are applied by XLA by field name: a name of an `xla.DebugOptions`
//! field (e.g. `xla_cpu_enable_fast_math`) sets that debug option; unknown names make
//! compilation fail with the plugin's "No such compile option" error.

use std::collections::BTreeMap;

use prost::Message;

/// Options for [`Client::compile`](super::Client::compile).
///
/// Defaults: one replica, one partition, device ordinal unset (XLA picks device 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompileOptions {
    device_ordinal: Option<i64>,
    /// Partitions of an SPMD program (1: not partitioned).
    partitions: Option<i64>,
    overrides: BTreeMap<String, OptionValue>,
}

/// The value of a named XLA option override.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
}

impl From<&str> for OptionValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}
impl From<String> for OptionValue {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}
impl From<bool> for OptionValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}
impl From<i64> for OptionValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<i32> for OptionValue {
    fn from(v: i32) -> Self {
        Self::Int(v.into())
    }
}
impl From<f64> for OptionValue {
    fn from(v: f64) -> Self {
        Self::Double(v)
    }
}

impl CompileOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds for this device ordinal (0..device count) instead of letting XLA choose.
    pub fn with_device_ordinal(mut self, ordinal: i64) -> Self {
        self.device_ordinal = Some(ordinal);
        self
    }

    /// An SPMD program over `n` devices: XLA's partitioner splits it by its sharding
    /// annotations (`mhlo.sharding`) into one program per device, inserting the collectives;
    /// the client's default device assignment places partition i on device i. `n` = 1 is an
    /// ordinary program.
    pub fn with_partitions(mut self, n: i64) -> Self {
        self.partitions = (n > 1).then_some(n);
        self
    }

    /// The partitions [`CompileOptions::with_partitions`] asked for (1 when unset).
    pub fn partitions(&self) -> i64 {
        self.partitions.unwrap_or(1)
    }

    /// Sets an XLA option by name, e.g. `.with_option("xla_cpu_enable_fast_math", false)`.
    /// A later call with the same name replaces the earlier value.
    pub fn with_option(mut self, name: impl Into<String>, value: impl Into<OptionValue>) -> Self {
        self.overrides.insert(name.into(), value.into());
        self
    }

    /// The serialized `xla.CompileOptionsProto` handed to `PJRT_Client_Compile`.
    pub fn to_proto_bytes(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    fn to_proto(&self) -> proto::CompileOptionsProto {
        proto::CompileOptionsProto {
            executable_build_options: Some(proto::ExecutableBuildOptionsProto {
                // XLA reads -1 as "not set"; proto3's implicit 0 would mean device 0.
                device_ordinal: self.device_ordinal.unwrap_or(-1),
                num_replicas: 1,
                num_partitions: self.partitions(),
                use_spmd_partitioning: self.partitions.is_some(),
            }),
            env_option_overrides: self
                .overrides
                .iter()
                .map(|(name, value)| {
                    let value = match value {
                        OptionValue::String(s) => proto::option_override::Value::String(s.clone()),
                        OptionValue::Bool(b) => proto::option_override::Value::Bool(*b),
                        OptionValue::Int(i) => proto::option_override::Value::Int(*i),
                        OptionValue::Double(d) => proto::option_override::Value::Double(*d),
                    };
                    (
                        name.clone(),
                        proto::OptionOverrideProto { value: Some(value) },
                    )
                })
                .collect(),
        }
    }
}

/// Hand-declared subset of the XLA protos (see the module docs for the field numbers).
pub(crate) mod proto {
    use std::collections::BTreeMap;

    /// `xla.CompileOptionsProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CompileOptionsProto {
        #[prost(message, optional, tag = "3")]
        pub executable_build_options: Option<ExecutableBuildOptionsProto>,
        #[prost(btree_map = "string, message", tag = "7")]
        pub env_option_overrides: BTreeMap<String, OptionOverrideProto>,
    }

    /// `xla.ExecutableBuildOptionsProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExecutableBuildOptionsProto {
        #[prost(int64, tag = "1")]
        pub device_ordinal: i64,
        #[prost(int64, tag = "4")]
        pub num_replicas: i64,
        #[prost(int64, tag = "5")]
        pub num_partitions: i64,
        #[prost(bool, tag = "6")]
        pub use_spmd_partitioning: bool,
    }

    /// `xla.OptionOverrideProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OptionOverrideProto {
        #[prost(oneof = "option_override::Value", tags = "1, 2, 3, 4")]
        pub value: Option<option_override::Value>,
    }

    pub mod option_override {
        /// `oneof value` of `xla.OptionOverrideProto`: `string_field`, `bool_field`,
        /// `int_field`, `double_field`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            String(String),
            #[prost(bool, tag = "2")]
            Bool(bool),
            #[prost(int64, tag = "3")]
            Int(i64),
            #[prost(double, tag = "4")]
            Double(f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_wire_format() {
        // field 3 (LEN) { field 1 varint -1 (10 bytes), field 4 = 1, field 5 = 1 }
        let bytes = CompileOptions::new().to_proto_bytes();
        let mut expected = vec![0x1a, 15, 0x08];
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        expected.extend_from_slice(&[0x20, 0x01, 0x28, 0x01]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn overrides_wire_format() {
        let bytes = CompileOptions::new()
            .with_device_ordinal(0)
            .with_option("k", true)
            .to_proto_bytes();
        // device_ordinal 0 is the proto3 default and is omitted.
        let build = [0x1a, 4, 0x20, 0x01, 0x28, 0x01];
        // field 7 (LEN) map entry { key(1) = "k", value(2) = { bool_field(2) = true } }
        let entry = [0x3a, 7, 0x0a, 1, b'k', 0x12, 2, 0x10, 0x01];
        assert_eq!(bytes, [&build[..], &entry[..]].concat());
    }

    #[test]
    fn round_trip_all_value_kinds() {
        let opts = CompileOptions::new()
            .with_device_ordinal(3)
            .with_option("s", "text")
            .with_option("b", false)
            .with_option("i", 7i64)
            .with_option("d", 0.5);
        let decoded = proto::CompileOptionsProto::decode(opts.to_proto_bytes().as_slice()).unwrap();
        assert_eq!(decoded, opts.to_proto());
        assert_eq!(decoded.executable_build_options.unwrap().device_ordinal, 3);
        assert_eq!(decoded.env_option_overrides.len(), 4);
    }
}
