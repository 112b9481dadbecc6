//! Timings of the PJRT layer on the CPU plugin. Not an asserting test; run alone so the
//! plugin load is the process's first:
//!
//! ```text
//! cargo test -p runtime --release --lib pjrt::bench -- --ignored --nocapture
//! ```

use std::time::{Duration, Instant};

use super::*;

const ADD: &str = r#"
func.func @main(%a: tensor<1024xf32>, %b: tensor<1024xf32>) -> tensor<1024xf32> {
  %0 = stablehlo.add %a, %b : tensor<1024xf32>
  return %0 : tensor<1024xf32>
}
"#;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn pjrt_timings() {
    let t = Instant::now();
    let api = Api::load(&default_plugin_path()).unwrap();
    let load = t.elapsed();

    let t = Instant::now();
    let client = Client::new(api).unwrap();
    let create = t.elapsed();

    let t = Instant::now();
    let exe = client.compile(ADD, &CompileOptions::new()).unwrap();
    let compile = t.elapsed();

    let a = client.buffer_from_host(&[1.0f32; 1024], &[1024]).unwrap();
    let b = client.buffer_from_host(&[2.0f32; 1024], &[1024]).unwrap();
    for _ in 0..100 {
        exe.execute_borrowed(&[&a, &b]).unwrap();
    }
    let mut lat: Vec<Duration> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            let out = exe.execute_borrowed(&[&a, &b]).unwrap();
            let d = t.elapsed();
            drop(out);
            d
        })
        .collect();
    lat.sort();

    const N: usize = 16 << 20; // 64 MiB of f32
    let host: Vec<f32> = (0..N).map(|i| i as f32).collect();
    let mut back = vec![0.0f32; N];
    let (mut h2d, mut d2h) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        let buf = client.buffer_from_host(&host, &[N as i64]).unwrap();
        buf.block_until_ready().unwrap();
        h2d = h2d.min(t.elapsed());
        let t = Instant::now();
        buf.copy_to_host(&mut back).unwrap();
        d2h = d2h.min(t.elapsed());
    }
    assert_eq!(back, host);
    let gib_s = |d: Duration| (N * 4) as f64 / d.as_secs_f64() / f64::from(1u32 << 30);

    println!("plugin dlopen + GetPjrtApi + init: {:8.2} ms", ms(load));
    println!("client create:                     {:8.2} ms", ms(create));
    println!("compile (add 1024xf32):            {:8.2} ms", ms(compile));
    println!(
        "execute add, 2 borrowed inputs:    p50 {:.1} us  p10 {:.1} us  p90 {:.1} us  (n=1000)",
        lat[500].as_secs_f64() * 1e6,
        lat[100].as_secs_f64() * 1e6,
        lat[900].as_secs_f64() * 1e6
    );
    println!(
        "h2d 64 MiB f32 (best of 5):        {:8.2} ms  {:.2} GiB/s",
        ms(h2d),
        gib_s(h2d)
    );
    println!(
        "d2h 64 MiB f32 (best of 5):        {:8.2} ms  {:.2} GiB/s",
        ms(d2h),
        gib_s(d2h)
    );
}
