//! Tests against the real CPU plugin (`scripts/setup.sh` installs it).

use std::path::Path;
use std::sync::OnceLock;

use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// One client shared by the tests (clients are thread-safe).
fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Client::from_default_plugin().expect("create CPU client (run scripts/setup.sh)")
    })
}

fn compile(text: &str) -> Executable {
    client()
        .compile(text, &CompileOptions::new())
        .unwrap_or_else(|e| panic!("compile failed: {e}\n{text}"))
}

const ADD_F32_GENERIC: &str = r#"
func.func @main(%a: tensor<1024xf32>, %b: tensor<1024xf32>) -> tensor<1024xf32> {
  %0 = "stablehlo.add"(%a, %b) : (tensor<1024xf32>, tensor<1024xf32>) -> tensor<1024xf32>
  "func.return"(%0) : (tensor<1024xf32>) -> ()
}
"#;

/// `a + b`, with `a` allowed to be updated in place (donation => output 0 reuses it).
const ACCUMULATE_ALIASED: &str = r#"
func.func @main(%a: tensor<4xf32> {tf.aliasing_output = 0 : i32}, %b: tensor<4xf32>) -> tensor<4xf32> {
  %0 = stablehlo.add %a, %b : tensor<4xf32>
  return %0 : tensor<4xf32>
}
"#;

#[test]
fn client_reports_cpu_platform() {
    let c = client();
    assert_eq!(c.platform_name().unwrap(), "cpu");
    assert!(c.addressable_device_count() >= 1);
    let _ = c.platform_version().unwrap();
    let (major, minor) = c.plugin().version();
    assert_eq!(major, pjrt_sys::HEADER_API_VERSION.0);
    assert!(minor >= pjrt_sys::HEADER_API_VERSION.1);
    assert!(format!("{c:?}").contains("xla_cpu_pjrt"));
}

#[test]
fn loading_twice_shares_the_api_and_clients_are_independent() {
    let a = Api::load_default().unwrap();
    let b = Api::load(&default_plugin_path()).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    // A second client on the same plugin works alongside the shared one.
    let other = Client::new(a).unwrap();
    assert_eq!(other.platform_name().unwrap(), "cpu");
    let attrs = other.plugin().attributes().unwrap();
    assert!(
        attrs.iter().any(|(k, _)| k.contains("stablehlo")),
        "{attrs:?}"
    );
}

#[test]
fn add_f32_matches_rust() {
    let exe = compile(ADD_F32_GENERIC);
    assert_eq!(exe.num_outputs(), 1);
    let mut rng = StdRng::seed_from_u64(1);
    let a: Vec<f32> = (0..1024).map(|_| rng.random_range(-100.0..100.0)).collect();
    let b: Vec<f32> = (0..1024).map(|_| rng.random_range(-100.0..100.0)).collect();
    let ba = client().buffer_from_host(&a, &[1024]).unwrap();
    let bb = client().buffer_from_host(&b, &[1024]).unwrap();
    let out = exe.execute_borrowed(&[&ba, &bb]).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dims(), &[1024]);
    assert_eq!(out[0].element_type(), ElementType::F32);
    let got = out[0].to_host::<f32>().unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(got, want, "f32 addition is exact to round-to-nearest");
}

#[test]
fn bf16_dot_general_accumulates_in_f32() {
    const M: usize = 8;
    const K: usize = 64;
    const N: usize = 5;
    let text = format!(
        r#"
func.func @main(%a: tensor<{M}x{K}xbf16>, %b: tensor<{K}x{N}xbf16>) -> tensor<{M}x{N}xf32> {{
  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0]
      : (tensor<{M}x{K}xbf16>, tensor<{K}x{N}xbf16>) -> tensor<{M}x{N}xf32>
  return %0 : tensor<{M}x{N}xf32>
}}
"#
    );
    let exe = compile(&text);
    let mut rng = StdRng::seed_from_u64(2);
    let a: Vec<bf16> = (0..M * K)
        .map(|_| bf16::from_f32(rng.random_range(-2.0..2.0)))
        .collect();
    let b: Vec<bf16> = (0..K * N)
        .map(|_| bf16::from_f32(rng.random_range(-2.0..2.0)))
        .collect();
    let ba = client()
        .buffer_from_host(&a, &[M as i64, K as i64])
        .unwrap();
    let bb = client()
        .buffer_from_host(&b, &[K as i64, N as i64])
        .unwrap();
    assert_eq!(ba.element_type(), ElementType::Bf16);
    let out = exe.execute_borrowed(&[&ba, &bb]).unwrap();
    assert_eq!(out[0].dims(), &[M as i64, N as i64]);
    let got = out[0].to_host::<f32>().unwrap();
    for i in 0..M {
        for j in 0..N {
            let (mut exact, mut magnitude) = (0.0f64, 0.0f64);
            for k in 0..K {
                let p = f64::from(a[i * K + k].to_f32()) * f64::from(b[k * N + j].to_f32());
                exact += p;
                magnitude += p.abs();
            }
            let err = (f64::from(got[i * N + j]) - exact).abs();
            // f32 accumulation of exact bf16 products: error well under K ulps of the magnitude.
            assert!(
                err <= magnitude * K as f64 * f64::from(f32::EPSILON),
                "[{i},{j}] got {} want {exact}",
                got[i * N + j]
            );
        }
    }
}

#[test]
fn host_round_trips_preserve_bits() {
    let c = client();
    let ints: Vec<i32> = vec![i32::MIN, -1, 0, 1, 42, i32::MAX];
    let b = c.buffer_from_host(&ints, &[2, 3]).unwrap();
    assert_eq!(b.dims(), &[2, 3]);
    assert_eq!(b.element_type(), ElementType::S32);
    assert!(b.on_device_size_in_bytes().unwrap() >= 24);
    assert_eq!(b.to_host::<i32>().unwrap(), ints);

    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(
        c.buffer_from_host(&bytes, &[256])
            .unwrap()
            .to_host::<u8>()
            .unwrap(),
        bytes
    );
    let words: Vec<u32> = vec![0, 1, u32::MAX];
    assert_eq!(
        c.buffer_from_host(&words, &[3])
            .unwrap()
            .to_host::<u32>()
            .unwrap(),
        words
    );

    let scalar = c.buffer_from_host(&[7.5f32], &[]).unwrap();
    assert_eq!(scalar.dims(), &[] as &[i64]);
    let mut out = [0.0f32];
    scalar.copy_to_host(&mut out).unwrap();
    assert_eq!(out, [7.5]);
    let empty = c.buffer_from_host::<f32>(&[], &[0, 4]).unwrap();
    assert!(empty.to_host::<f32>().unwrap().is_empty());
}

#[test]
fn i32_program_runs() {
    let exe = compile(
        r#"
func.func @main(%a: tensor<3xi32>, %b: tensor<3xi32>) -> tensor<3xi32> {
  %0 = stablehlo.multiply %a, %b : tensor<3xi32>
  return %0 : tensor<3xi32>
}"#,
    );
    let a = client().buffer_from_host(&[2i32, -3, 40000], &[3]).unwrap();
    let b = client().buffer_from_host(&[5i32, 7, 40000], &[3]).unwrap();
    let out = exe.execute_borrowed(&[&a, &b]).unwrap();
    // 1.6e9 fits in i32; checks the values go through as integers, not floats.
    assert_eq!(
        out[0].to_host::<i32>().unwrap(),
        vec![10, -21, 1_600_000_000]
    );
}

#[test]
fn borrowed_inputs_survive_repeated_executes() {
    let exe = compile(ADD_F32_GENERIC);
    let a: Vec<f32> = (0..1024).map(|i| i as f32).collect();
    let ba = client().buffer_from_host(&a, &[1024]).unwrap();
    for round in 0..3 {
        let out = exe
            .execute(vec![Arg::Borrowed(&ba), Arg::Borrowed(&ba)])
            .unwrap();
        let got = out[0].to_host::<f32>().unwrap();
        assert!(
            got.iter().enumerate().all(|(i, &v)| v == 2.0 * i as f32),
            "round {round}"
        );
        assert_eq!(
            ba.to_host::<f32>().unwrap(),
            a,
            "input changed in round {round}"
        );
    }
}

#[test]
fn donated_pool_is_updated_in_place_across_calls() {
    let exe = compile(ACCUMULATE_ALIASED);
    let delta = client()
        .buffer_from_host(&[1.0f32, 2.0, 3.0, 4.0], &[4])
        .unwrap();
    let mut pool = client()
        .buffer_from_host(&[10.0f32, 20.0, 30.0, 40.0], &[4])
        .unwrap();
    let address = pool.device_address().unwrap();
    for _ in 0..2 {
        let mut out = exe
            .execute(vec![Arg::Donated(pool), Arg::Borrowed(&delta)])
            .unwrap();
        pool = out.pop().unwrap();
        // Same memory: the output aliases the donated input instead of a fresh allocation.
        assert_eq!(pool.device_address().unwrap(), address);
    }
    assert_eq!(pool.to_host::<f32>().unwrap(), vec![12.0, 24.0, 36.0, 48.0]);
    assert_eq!(delta.to_host::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn borrowing_an_aliased_parameter_copies_instead_of_clobbering() {
    let exe = compile(ACCUMULATE_ALIASED);
    let a = client()
        .buffer_from_host(&[1.0f32, 1.0, 1.0, 1.0], &[4])
        .unwrap();
    let b = client()
        .buffer_from_host(&[0.5f32, 0.5, 0.5, 0.5], &[4])
        .unwrap();
    for _ in 0..2 {
        let out = exe
            .execute(vec![Arg::Borrowed(&a), Arg::Borrowed(&b)])
            .unwrap();
        assert_eq!(out[0].to_host::<f32>().unwrap(), vec![1.5; 4]);
        assert_ne!(
            out[0].device_address().unwrap(),
            a.device_address().unwrap()
        );
    }
    assert_eq!(a.to_host::<f32>().unwrap(), vec![1.0; 4]);
}

#[test]
fn tuple_results_are_flattened() {
    let exe = compile(
        r#"
func.func @main(%a: tensor<2xf32>) -> (tensor<2xf32>, tensor<2xi32>) {
  %0 = stablehlo.negate %a : tensor<2xf32>
  %1 = stablehlo.convert %a : (tensor<2xf32>) -> tensor<2xi32>
  return %0, %1 : tensor<2xf32>, tensor<2xi32>
}"#,
    );
    assert_eq!(exe.num_outputs(), 2);
    let a = client().buffer_from_host(&[1.5f32, -2.0], &[2]).unwrap();
    let out = exe.execute_borrowed(&[&a]).unwrap();
    assert_eq!(out[0].to_host::<f32>().unwrap(), vec![-1.5, 2.0]);
    assert_eq!(out[1].to_host::<i32>().unwrap(), vec![1, -2]);
}

#[test]
fn executes_concurrently_from_threads() {
    let exe = compile(ADD_F32_GENERIC);
    let ones = client().buffer_from_host(&[1.0f32; 1024], &[1024]).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (exe, ones) = (&exe, &ones);
            s.spawn(move || {
                let x = client()
                    .buffer_from_host(&[t as f32; 1024], &[1024])
                    .unwrap();
                for _ in 0..20 {
                    let out = exe.execute_borrowed(&[&x, ones]).unwrap();
                    assert_eq!(out[0].to_host::<f32>().unwrap(), vec![t as f32 + 1.0; 1024]);
                }
            });
        }
    });
}

#[test]
fn compile_options_by_name() {
    let ok = CompileOptions::new()
        .with_device_ordinal(0)
        .with_option("xla_cpu_enable_fast_math", false);
    client().compile(ADD_F32_GENERIC, &ok).unwrap();
    let bad = CompileOptions::new().with_option("xla_no_such_option_kernelgen", true);
    let err = client().compile(ADD_F32_GENERIC, &bad).unwrap_err();
    assert!(
        err.to_string().contains("xla_no_such_option_kernelgen"),
        "{err}"
    );
}

#[test]
fn bad_mlir_is_an_error_with_the_plugin_text() {
    let err = client()
        .compile(
            "func.func @main(%a: tensor<4xf32>) -> tensor<4xf32> { %0 = stablehlo.frobnicate %a }",
            &CompileOptions::new(),
        )
        .unwrap_err();
    let PjrtError::Plugin { call, message, .. } = &err else {
        panic!("unexpected error kind: {err:?}")
    };
    assert_eq!(*call, "PJRT_Client_Compile");
    assert!(message.contains("frobnicate"), "{message}");
}

#[test]
fn argument_errors_are_reported() {
    let c = client();
    let err = c
        .buffer_from_host(&[1.0f32, 2.0, 3.0], &[2, 2])
        .unwrap_err();
    assert!(matches!(err, PjrtError::InvalidArgument(_)), "{err}");
    assert!(matches!(
        c.buffer_from_host(&[0.0f32; 4], &[-1, -4]),
        Err(PjrtError::InvalidArgument(_))
    ));

    let b = c.buffer_from_host(&[1i32, 2], &[2]).unwrap();
    let err = b.to_host::<f32>().unwrap_err();
    assert!(
        matches!(
            err,
            PjrtError::TypeMismatch {
                expected: ElementType::F32,
                actual: ElementType::S32
            }
        ),
        "{err}"
    );
    assert!(b.copy_to_host(&mut [0i32; 3]).is_err());

    // Wrong arity and wrong types are caught by the plugin, not by a crash.
    let exe = compile(ADD_F32_GENERIC);
    assert!(matches!(
        exe.execute_borrowed(&[&b]),
        Err(PjrtError::Plugin { .. })
    ));
    assert!(exe.execute_borrowed(&[&b, &b]).is_err());
}

#[test]
fn client_create_options_are_forwarded() {
    let api = Api::load_default().unwrap();
    let two =
        Client::with_options(api.clone(), &[("cpu_device_count", OptionValue::Int(2))]).unwrap();
    assert_eq!(two.addressable_device_count(), 2);
    // A client without devices is refused cleanly (and destroyed) instead of being returned.
    let err = Client::with_options(api, &[("cpu_device_count", OptionValue::Int(0))]).unwrap_err();
    assert!(err.to_string().contains("no addressable devices"), "{err}");
}

#[test]
fn loading_a_missing_plugin_names_the_path() {
    let path = Path::new("/nonexistent/kernelgen/libpjrt_missing.so");
    let err = Api::load(path).unwrap_err();
    assert!(matches!(err, PjrtError::Load { .. }));
    assert!(
        err.to_string()
            .contains("/nonexistent/kernelgen/libpjrt_missing.so"),
        "{err}"
    );
}

#[test]
fn loading_a_non_pjrt_library_is_an_error() {
    let libz = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib64/libz.so.1",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("libz.so.1 on this machine");
    let err = Api::load(libz).unwrap_err();
    assert!(err.to_string().contains("GetPjrtApi"), "{err}");
}

#[test]
fn default_plugin_path_points_into_the_cache() {
    if std::env::var_os("PJRT_PLUGIN").is_none() {
        let p = default_plugin_path();
        assert!(
            p.ends_with("xla_cpu_pjrt/xla_cpu_pjrt.so"),
            "{}",
            p.display()
        );
    }
}

/// Both CPU plugins create uninitialized buffers (the KV pools are made this way): right shape
/// and type, and a donated program can write them.
#[test]
fn uninitialized_buffers_exist_on_both_cpu_plugins() {
    let serving = Client::new(Api::load(&crate::cache::serving_plugin_path()).unwrap()).unwrap();
    for c in [client(), &serving] {
        for ty in [ElementType::F32, ElementType::Bf16] {
            let b = c.uninitialized_buffer(ty, &[3, 4, 2]).unwrap();
            assert_eq!(b.dims(), &[3, 4, 2]);
            assert_eq!(b.element_type(), ty);
        }
        let exe = c
            .compile(ACCUMULATE_ALIASED, &CompileOptions::new())
            .unwrap();
        let zero = c.buffer_from_host(&[0.0f32; 4], &[4]).unwrap();
        let pool = c.uninitialized_buffer(ElementType::F32, &[4]).unwrap();
        let out = exe
            .execute(vec![Arg::Donated(pool), Arg::Borrowed(&zero)])
            .unwrap();
        assert_eq!(out[0].dims(), &[4]);
    }
    assert!(client()
        .uninitialized_buffer(ElementType::F32, &[-1])
        .is_err());
}

/// The compiler's memory plan names the program's argument and output bytes, and the output
/// bytes a donated argument backs.
#[test]
fn compiled_memory_stats_count_arguments_outputs_and_aliases() {
    let add = compile(ADD_F32_GENERIC).compiled_memory_stats().unwrap();
    assert_eq!(add.argument_bytes, 2 * 1024 * 4, "{add:?}");
    assert_eq!(add.output_bytes, 1024 * 4, "{add:?}");
    assert_eq!(add.alias_bytes, 0, "{add:?}");
    let acc = compile(ACCUMULATE_ALIASED).compiled_memory_stats().unwrap();
    assert_eq!(acc.alias_bytes, 4 * 4, "{acc:?}");
}

#[test]
fn a_serialized_executable_runs_the_same_program_after_loading() {
    let exe = compile(ADD_F32_GENERIC);
    let bytes = exe.serialize().expect("serialize");
    drop(exe);
    let loaded = client().deserialize(&bytes).expect("deserialize");
    let mut rng = StdRng::seed_from_u64(rand::random());
    let a: Vec<f32> = (0..1024).map(|_| rng.random_range(-1e3..1e3)).collect();
    let b: Vec<f32> = (0..1024).map(|_| rng.random_range(-1e3..1e3)).collect();
    let ba = client().buffer_from_host(&a, &[1024]).unwrap();
    let bb = client().buffer_from_host(&b, &[1024]).unwrap();
    let out = loaded.execute_borrowed(&[&ba, &bb]).unwrap();
    let got: Vec<f32> = out[0].to_host().unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(got, want);
    assert!(client().deserialize(&bytes[..bytes.len() / 2]).is_err());
}

/// A Megatron MLP over `n` devices: `x` replicated, `w1` split by columns, `w2` by rows; XLA's
/// SPMD partitioner inserts the all-reduce after the second matmul.
fn megatron_mlp(n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let ids = ids.join(",");
    format!(
        r#"
func.func @main(%x: tensor<4x8xf32> {{mhlo.sharding = "{{replicated}}"}},
                %w1: tensor<8x{h}xf32> {{mhlo.sharding = "{{devices=[1,{n}]{ids}}}"}},
                %w2: tensor<{h}x8xf32> {{mhlo.sharding = "{{devices=[{n},1]{ids}}}"}})
    -> (tensor<4x8xf32> {{mhlo.sharding = "{{replicated}}"}}) {{
  %h = stablehlo.dot_general %x, %w1, contracting_dims = [1] x [0] : (tensor<4x8xf32>, tensor<8x{h}xf32>) -> tensor<4x{h}xf32>
  %t = stablehlo.tanh %h : tensor<4x{h}xf32>
  %y = stablehlo.dot_general %t, %w2, contracting_dims = [1] x [0] : (tensor<4x{h}xf32>, tensor<{h}x8xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}}
"#,
        h = 4 * n
    )
}

/// A program compiled as N partitions runs on N devices of one client, each holding only its
/// shards (the compiler's argument bytes per device say so), and every device's output equals
/// the unpartitioned product computed on the host in f64: both when XLA's partitioner splits a
/// program annotated with shardings, and when the program is written per device (manual, its
/// all-reduce explicit).
#[test]
fn a_partitioned_program_runs_on_every_device_with_its_shards() {
    let api = Api::load(&crate::cache::serving_plugin_path()).unwrap();
    for n in [2usize, 3] {
        let client = Client::with_options(
            api.clone(),
            &[("cpu_device_count", OptionValue::Int(n as i64))],
        )
        .unwrap();
        for text in [megatron_mlp(n), megatron_mlp_manual(n)] {
            let exe = client
                .compile(&text, &CompileOptions::new().with_partitions(n as i64))
                .unwrap_or_else(|e| panic!("n={n}: {e}"));
            let h = 4 * n;
            let mut rng = StdRng::seed_from_u64(n as u64);
            let mut draw = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
            };
            let (x, w1, w2) = (draw(4 * 8), draw(8 * h), draw(h * 8));
            // Host reference in f64.
            let mut want = vec![0f64; 4 * 8];
            for r in 0..4 {
                let t: Vec<f64> = (0..h)
                    .map(|j| {
                        (0..8)
                            .map(|k| x[r * 8 + k] as f64 * w1[k * h + j] as f64)
                            .sum::<f64>()
                            .tanh()
                    })
                    .collect();
                for c in 0..8 {
                    want[r * 8 + c] = (0..h).map(|j| t[j] * w2[j * 8 + c] as f64).sum();
                }
            }
            let mut buffers = Vec::new();
            for d in 0..n {
                let cols: Vec<f32> = (0..8)
                    .flat_map(|k| w1[k * h + 4 * d..k * h + 4 * d + 4].to_vec())
                    .collect();
                let rows = w2[4 * d * 8..(4 * d + 4) * 8].to_vec();
                buffers.push([
                    client.buffer_from_host_on(d, &x, &[4, 8]).unwrap(),
                    client.buffer_from_host_on(d, &cols, &[8, 4]).unwrap(),
                    client.buffer_from_host_on(d, &rows, &[4, 8]).unwrap(),
                ]);
            }
            let args = buffers
                .iter()
                .map(|b| b.iter().map(Arg::Borrowed).collect())
                .collect();
            let out = exe.execute_partitioned(args).unwrap();
            assert_eq!(out.len(), n);
            for (d, outs) in out.iter().enumerate() {
                let got: Vec<f32> = outs[0].to_host().unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 1e-5, "n={n} device {d}: {g} vs {w}");
                }
            }
            // Per device: x whole, a quarter-width column block of w1 and a row block of w2.
            let stats = exe.compiled_memory_stats().unwrap();
            assert_eq!(
                stats.argument_bytes,
                4 * (4 * 8 + 8 * 4 + 4 * 8),
                "n={n}: {stats:?}"
            );
            // One list per device, each of the same length.
            let one: Vec<Vec<Arg>> = vec![buffers[0].iter().map(Arg::Borrowed).collect()];
            assert!(n == 1 || exe.execute_partitioned(one).is_err());
        }
    }
}

/// [`megatron_mlp`] written per device (shard shapes, the all-reduce explicit): the program a
/// tensor-parallel step runs, every parameter and result manual.
fn megatron_mlp_manual(n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        r#"
func.func @main(%x: tensor<4x8xf32> {{mhlo.sharding = "{{manual}}"}},
                %w1: tensor<8x4xf32> {{mhlo.sharding = "{{manual}}"}},
                %w2: tensor<4x8xf32> {{mhlo.sharding = "{{manual}}"}})
    -> (tensor<4x8xf32> {{mhlo.sharding = "{{manual}}"}}) {{
  %h = stablehlo.dot_general %x, %w1, contracting_dims = [1] x [0] : (tensor<4x8xf32>, tensor<8x4xf32>) -> tensor<4x4xf32>
  %t = stablehlo.tanh %h : tensor<4x4xf32>
  %p = stablehlo.dot_general %t, %w2, contracting_dims = [1] x [0] : (tensor<4x4xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %y = "stablehlo.all_reduce"(%p) ({{
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = "stablehlo.add"(%a, %b) : (tensor<f32>, tensor<f32>) -> tensor<f32>
      "stablehlo.return"(%s) : (tensor<f32>) -> ()
  }}) {{channel_handle = #stablehlo.channel_handle<handle = 1, type = 1>, replica_groups = dense<[[{ids}]]> : tensor<1x{n}xi64>, use_global_device_ids}} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}}
"#,
        ids = ids.join(", ")
    )
}

/// `read_prefix` gives the first elements of what `to_host` gives, for an uploaded buffer and
/// for a program's output (both read in place on the CPU plugin), and refuses a wrong type or
/// more elements than the buffer holds.
#[test]
fn read_prefix_equals_the_start_of_to_host() {
    let exe = compile(ADD_F32_GENERIC);
    let mut rng = StdRng::seed_from_u64(3);
    let a: Vec<f32> = (0..1024).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..1024).map(|_| rng.random_range(-1.0..1.0)).collect();
    let ba = client().buffer_from_host(&a, &[1024]).unwrap();
    let bb = client().buffer_from_host(&b, &[1024]).unwrap();
    let out = exe.execute_borrowed(&[&ba, &bb]).unwrap();
    for buf in [&ba, &out[0]] {
        assert!(
            buf.reads_in_place().unwrap(),
            "the CPU plugin's buffers are host memory, row-major: read in place"
        );
        let whole = buf.to_host::<f32>().unwrap();
        for n in [0, 1, 700, 1024] {
            assert_eq!(buf.read_prefix::<f32>(n).unwrap(), whole[..n]);
        }
        assert!(buf.read_prefix::<f32>(1025).is_err());
        assert!(buf.read_prefix::<i32>(4).is_err());
    }
    let m: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let bm = client().buffer_from_host(&m, &[3, 4]).unwrap();
    assert_eq!(bm.read_prefix::<f32>(8).unwrap(), m[..8]);
}
