//! [`DeviceExecutor`]: the engine's [`StepExecutor`] on a PJRT device.
//!
//! Weights are uploaded once, straight from the model's own buffers, and borrowed by every step.
//! Each layer's KV pool is created on the device uninitialized (never uploaded, never filled:
//! the kernels ignore every slot a sequence has not written, whatever it holds) and donated to
//! every step, whose program aliases it to an output: the pool is updated in place and never
//! copied or moved back to the host. Programs are compiled (or loaded from the program cache) per
//! token-count bucket on first use, and kept loaded, up to [`ProgramSetup::max_loaded`] of them.

use super::weights::upload_weights;
use super::{StepShapes, StepSource, NUM_STEP_INPUTS};
use runtime::cache::executables::{ExecutableCache, Origin};
use runtime::dtype::Dtype;
use runtime::engine::{EngineConfig, EngineError, StepBatch, StepExecutor};
use runtime::kernels::timeline;
use runtime::mem::MemTrace;
use runtime::model::WeightSource;
use runtime::pjrt::{
    Arg, Buffer, Client, CompileOptions, CompiledMemoryStats, ElementType, Executable,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn exec_err(what: &str) -> impl Fn(runtime::pjrt::PjrtError) -> EngineError + '_ {
    move |e| EngineError::Executor(format!("{what}: {e}"))
}

/// Where the executor's part of some steps went.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PhaseTimes {
    pub steps: usize,
    /// Host-side time building and uploading step inputs.
    pub host_s: f64,
    /// Time inside execute (the plugin may return before the device work is done).
    pub execute_s: f64,
    /// Time copying logits back (waits for the program to finish).
    pub download_s: f64,
}

impl PhaseTimes {
    fn add(&mut self, host: f64, execute: f64, download: f64) {
        self.steps += 1;
        self.host_s += host;
        self.execute_s += execute;
        self.download_s += download;
    }
}

/// Timings the executor records.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ExecutorTimes {
    /// Per program ("t16", "t16-decode"): emission + compile (or cache load) time in seconds.
    pub compile: BTreeMap<String, f64>,
    /// Per program: whether it was compiled or loaded from the program cache.
    pub origin: BTreeMap<String, Origin>,
    /// Every step.
    pub all: PhaseTimes,
    /// Steps that ran a decode-only program (one new token per sequence).
    pub decode: PhaseTimes,
    /// Programs unloaded to stay within [`ProgramSetup::max_loaded`], and loaded again later.
    pub unloads: u64,
    pub reloads: u64,
}

/// Where a served model's memory went: the process's peak resident set, the resident memory at
/// each stage, and the compiler's memory plan of each program.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryReport {
    pub peak_rss_bytes: Option<u64>,
    pub stages: Vec<runtime::mem::Stage>,
    pub compiled: BTreeMap<String, CompiledMemoryStats>,
}

pub struct DeviceExecutor {
    client: Client,
    engine: EngineConfig,
    kv_dtype: Dtype,
    vocab: usize,
    buckets: Vec<usize>,
    /// Loaded programs by (token bucket, decode-only), with the `uses` count of their last use.
    programs: BTreeMap<(usize, bool), (Executable, u64)>,
    /// Program uses so far: the clock of least-recently-used unloading (never reset, unlike
    /// `times`, which benchmarks clear between rounds).
    uses: u64,
    /// Every program loaded once (a later load is a reload).
    seen: std::collections::BTreeSet<(usize, bool)>,
    /// At most this many programs loaded at once; `None`: no bound.
    max_loaded: Option<usize>,
    source: StepSource,
    /// Devices of tensor parallelism; `weights` and `pools` hold one list per device.
    tp: usize,
    weights: Vec<Vec<Buffer>>,
    pools: Vec<Vec<Buffer>>,
    pub times: ExecutorTimes,
    /// Resident memory after the upload, the pools, each compile and the first step.
    pub memory: MemTrace,
    /// The compiler's memory plan of each program ("t16", "t16-decode"), where the plugin
    /// reports it.
    pub compiled: BTreeMap<String, CompiledMemoryStats>,
    /// Compile time not yet handed to the engine (see `take_setup_time`).
    unreported_setup: Duration,
    /// Where compiled programs are kept between runs; `None` compiles every run.
    program_cache: Option<ExecutableCache>,
}

/// How a [`DeviceExecutor`] gets its programs: from a cache on disk, and which ones before the
/// weights are uploaded.
#[derive(Clone, Debug, Default)]
pub struct ProgramSetup {
    /// Where compiled programs are kept between runs; `None` compiles every run.
    pub cache: Option<ExecutableCache>,
    /// Steps, as (tokens, decode-only), whose programs are compiled before the weights are
    /// uploaded: a compile needs transient memory several times its program's size, which
    /// then never adds to the weights' and the KV pool's. Other programs compile on first use.
    pub before_weights: Vec<(usize, bool)>,
    /// At most this many programs stay loaded: XLA's CPU executable keeps its optimized module,
    /// a protobuf copy of it and its buffer assignment resident (~70 MB for SmolLM2's step
    /// program), so a server that met every token bucket would otherwise hold them all. The
    /// least recently used program is unloaded first and loaded again (from `cache`) when a
    /// step needs it. `None`: no bound.
    pub max_loaded: Option<usize>,
}

impl DeviceExecutor {
    /// Uploads `model`'s weights (part by part: a [`runtime::model::ModelFile`] is streamed)
    /// and creates the KV pools on `client`'s device. Programs compile on first use.
    pub fn new(
        client: Client,
        model: &dyn WeightSource,
        engine: &EngineConfig,
        kv_dtype: Dtype,
        buckets: Vec<usize>,
        source: StepSource,
    ) -> Result<DeviceExecutor, EngineError> {
        let setup = ProgramSetup::default();
        Self::with_programs(client, model, engine, kv_dtype, buckets, source, &setup)
    }

    /// [`DeviceExecutor::new`], with programs from `setup.cache` and those of
    /// `setup.before_weights` ready before the weights are uploaded.
    pub fn with_programs(
        client: Client,
        model: &dyn WeightSource,
        engine: &EngineConfig,
        kv_dtype: Dtype,
        buckets: Vec<usize>,
        source: StepSource,
        setup: &ProgramSetup,
    ) -> Result<DeviceExecutor, EngineError> {
        if buckets.is_empty() || buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(EngineError::Config(format!(
                "token buckets must be ascending and non-empty: {buckets:?}"
            )));
        }
        let config = model.config();
        let tp = source.tp;
        let shard = source
            .shard()
            .map_err(|e| EngineError::Config(e.to_string()))?;
        if client.addressable_device_count() < tp {
            return Err(EngineError::Config(format!(
                "--tp {tp}: the plugin has {} device(s); pass --tp {} or fewer",
                client.addressable_device_count(),
                client.addressable_device_count()
            )));
        }
        let mut exec = DeviceExecutor {
            client,
            engine: engine.clone(),
            kv_dtype,
            vocab: config.vocab_size,
            buckets,
            programs: BTreeMap::new(),
            seen: Default::default(),
            uses: 0,
            max_loaded: setup.max_loaded.map(|n| n.max(1)),
            source,
            tp,
            weights: Vec::new(),
            pools: Vec::new(),
            times: ExecutorTimes::default(),
            memory: MemTrace::default(),
            compiled: BTreeMap::new(),
            unreported_setup: Duration::ZERO,
            program_cache: setup.cache.clone(),
        };
        for &(tokens, decode) in &setup.before_weights {
            let bucket = exec.bucket_for(tokens)?;
            exec.compile_bucket(bucket, decode)?;
        }
        exec.weights = upload_weights(
            &exec.client,
            model,
            tp,
            exec.source.weights,
            exec.source.split_head(),
        )?;
        // Each part was dequantized into a host buffer freed after its upload: hand that heap
        // back rather than keep it as the process's high-water mark.
        runtime::mem::release_free_heap();
        exec.memory.record("weights uploaded");
        let shapes = StepShapes::new(engine, exec.buckets[0], kv_dtype);
        let pool_dims = shapes.pool_dims(&shard);
        let pool_type = match kv_dtype {
            Dtype::F32 => ElementType::F32,
            Dtype::Bf16 => ElementType::Bf16,
        };
        exec.pools = (0..tp)
            .map(|d| {
                (0..config.num_layers)
                    .map(|_| {
                        exec.client
                            .uninitialized_buffer_on(d, pool_type, &pool_dims)
                            .map_err(exec_err("creating a KV pool"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        exec.memory.record("KV pools created");
        Ok(exec)
    }

    /// Peak resident memory so far, [`DeviceExecutor::memory`] and [`DeviceExecutor::compiled`].
    pub fn memory_report(&self) -> MemoryReport {
        MemoryReport {
            peak_rss_bytes: MemTrace::peak_rss_bytes(),
            stages: self.memory.stages.clone(),
            compiled: self.compiled.clone(),
        }
    }

    /// Bytes of every layer's KV pool on the device.
    pub fn pool_bytes(&self) -> u64 {
        self.pools
            .iter()
            .flatten()
            .map(|p| p.on_device_size_in_bytes().unwrap_or(0) as u64)
            .sum()
    }

    /// The client the weights and pools live on.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Where the programs come from (the model, the kernel, the devices).
    pub fn source(&self) -> &StepSource {
        &self.source
    }

    /// The weights uploaded to device 0, in [`super::weights::pack_weights_dims`] order.
    pub fn weights(&self) -> &[Buffer] {
        &self.weights[0]
    }

    /// The shapes of a program: decode-only ones hold one row per sequence.
    pub fn shapes(&self, bucket: usize, decode: bool) -> StepShapes {
        let shapes = if decode {
            StepShapes::decode(&self.engine, bucket, self.kv_dtype)
        } else {
            StepShapes::new(&self.engine, bucket, self.kv_dtype)
        };
        StepShapes {
            weights_dtype: self.source.weights,
            split_head: self.source.split_head(),
            ..shapes
        }
    }

    /// Loads the program for `bucket` tokens (decode-only or general): compiled, or from the
    /// program cache, the first time; again after [`ProgramSetup::max_loaded`] unloaded it.
    pub fn compile_bucket(
        &mut self,
        bucket: usize,
        decode: bool,
    ) -> Result<&Executable, EngineError> {
        let key = (bucket, decode);
        self.uses += 1;
        let now = self.uses;
        if let Some(entry) = self.programs.get_mut(&key) {
            entry.1 = now;
        } else {
            self.unload_to_make_room();
            let exe = self.load_program(bucket, decode)?;
            self.programs.insert(key, (exe, now));
        }
        Ok(&self.programs[&key].0)
    }

    /// Unloads least recently used programs until one more fits under `max_loaded`.
    fn unload_to_make_room(&mut self) {
        let Some(max) = self.max_loaded else { return };
        while self.programs.len() >= max {
            let Some(oldest) = self
                .programs
                .iter()
                .min_by_key(|(_, e)| e.1)
                .map(|(k, _)| *k)
            else {
                return;
            };
            self.programs.remove(&oldest);
            self.times.unloads += 1;
            runtime::mem::release_free_heap();
        }
    }

    /// Emits and compiles (or loads from the program cache) one program, recording its time,
    /// origin, memory plan and, on its first load, the resident memory after it.
    fn load_program(&mut self, bucket: usize, decode: bool) -> Result<Executable, EngineError> {
        let start = Instant::now();
        let shapes = self.shapes(bucket, decode);
        let text = self
            .source
            .program(&shapes)
            .map_err(|e| EngineError::Executor(e.to_string()))?;
        let name = format!("t{bucket}{}", if decode { "-decode" } else { "" });
        let options = CompileOptions::new().with_partitions(self.tp as i64);
        let (exe, origin) = match &self.program_cache {
            Some(cache) => cache.load_or_compile(&self.client, &text, &options),
            None => self
                .client
                .compile(&text, &options)
                .map(|e| (e, Origin::Compiled)),
        }
        .map_err(exec_err(&format!("compiling the step program {name}")))?;
        drop(text);
        self.times
            .compile
            .insert(name.clone(), start.elapsed().as_secs_f64());
        self.times.origin.insert(name.clone(), origin);
        runtime::mem::release_free_heap();
        if self.seen.insert((bucket, decode)) {
            let verb = match origin {
                Origin::Compiled => "compiled",
                Origin::Loaded => "loaded",
            };
            self.memory.record(format!("{verb} {name}"));
            if let Ok(stats) = exe.compiled_memory_stats() {
                self.compiled.insert(name, stats);
            }
        } else {
            self.times.reloads += 1;
        }
        self.unreported_setup += start.elapsed();
        Ok(exe)
    }

    /// Programs loaded now.
    pub fn loaded_programs(&self) -> usize {
        self.programs.len()
    }

    fn bucket_for(&self, tokens: usize) -> Result<usize, EngineError> {
        self.buckets
            .iter()
            .copied()
            .find(|&b| b >= tokens)
            .ok_or_else(|| {
                EngineError::Executor(format!(
                    "{tokens} tokens in one step exceed the largest bucket {}",
                    self.buckets.last().copied().unwrap_or(0)
                ))
            })
    }

    /// The step's small inputs, padded to `shapes`, on each device (`[d]`).
    fn inputs(
        &self,
        batch: &StepBatch,
        shapes: &StepShapes,
    ) -> Result<Vec<Vec<Buffer>>, EngineError> {
        let (t, s, r) = (shapes.tokens, shapes.seqs, shapes.logits_rows);
        let pps = shapes.pages_per_seq;
        if batch.seqs.len() > s || batch.logits_rows.len() > r {
            return Err(EngineError::Executor(format!(
                "batch of {} seqs / {} logits rows exceeds the bucket's {s} / {r}",
                batch.seqs.len(),
                batch.logits_rows.len()
            )));
        }
        let pad = |v: &[u32], fill: i32, n: usize| -> Vec<i32> {
            let mut out: Vec<i32> = v.iter().map(|&x| x as i32).collect();
            out.resize(n, fill);
            out
        };
        let scratch = (shapes.scratch_page() * shapes.page_size) as i32;
        let tokens = pad(&batch.token_ids, 0, t);
        let positions = pad(&batch.positions, 0, t);
        let slots = pad(&batch.slot_mapping, scratch, t);
        let mut kv_lens = vec![0i32; s];
        let mut pages = vec![0i32; s * pps];
        let mut cu = vec![0i32; s + 1];
        for (i, q) in batch.seqs.iter().enumerate() {
            kv_lens[i] = q.kv_len as i32;
            for (j, &p) in q.pages.iter().take(pps).enumerate() {
                pages[i * pps + j] = p as i32;
            }
            cu[i + 1] = (q.q_start + q.q_len) as i32;
        }
        let total = cu[batch.seqs.len()];
        cu[batch.seqs.len() + 1..]
            .iter_mut()
            .for_each(|c| *c = total);
        let rows: Vec<u32> = batch.logits_rows.iter().map(|&r| r as u32).collect();
        let rows = pad(&rows, 0, r);
        let num_seqs = [batch.seqs.len() as i32];
        let argmax_only = [batch.argmax_only as i32];
        let (t, s, r, pps) = (t as i64, s as i64, r as i64, pps as i64);
        let host: [(&[i32], &[i64]); NUM_STEP_INPUTS] = [
            (&tokens, &[t]),
            (&positions, &[t]),
            (&slots, &[t]),
            (&kv_lens, &[s]),
            (&pages, &[s, pps]),
            (&cu, &[s + 1]),
            (&num_seqs, &[1]),
            (&rows, &[r]),
            (&argmax_only, &[1]),
        ];
        (0..self.tp)
            .map(|d| {
                host.iter()
                    .map(|(v, dims)| {
                        self.client
                            .buffer_from_host_on(d, v, dims)
                            .map_err(exec_err("uploading step inputs"))
                    })
                    .collect()
            })
            .collect()
    }
}

impl StepExecutor for DeviceExecutor {
    fn step(&mut self, batch: &StepBatch) -> Result<Vec<f32>, EngineError> {
        let host_start = Instant::now();
        let bucket = self.bucket_for(batch.token_ids.len())?;
        // One new token per sequence: the decode program, whose kernel advances all sequences in
        // lockstep (the scheduler never packs more than max_seqs; `inputs` checks the bucket).
        let decode = batch.seqs.iter().all(|q| q.q_len == 1);
        self.compile_bucket(bucket, decode)?;
        let shapes = self.shapes(bucket, decode);
        let inputs = self.inputs(batch, &shapes)?;
        let pools = std::mem::take(&mut self.pools);
        // Per device: its inputs, its pools (donated: updated in place) and its weights.
        let args: Vec<Vec<Arg>> = inputs
            .iter()
            .zip(pools)
            .zip(&self.weights)
            .map(|((inputs, pools), weights)| {
                let mut args: Vec<Arg> = inputs.iter().map(Arg::Borrowed).collect();
                args.extend(pools.into_iter().map(Arg::Donated));
                args.extend(weights.iter().map(Arg::Borrowed));
                args
            })
            .collect();
        let exec_start = Instant::now();
        let span = timeline::now();
        let out = self.programs[&(bucket, decode)]
            .0
            .execute_partitioned(args)
            .map_err(exec_err(
                "executing the step (the KV pools were donated and are lost)",
            ))?;
        let dl_start = Instant::now();
        // Every device ends with the same logits (the hidden state is all-reduced and the LM
        // head is whole on each): device 0's are read.
        let mut logits_buf = None;
        for mut device in out {
            let logits = device.remove(0);
            logits_buf.get_or_insert(logits);
            self.pools.push(device);
        }
        let logits_buf = logits_buf
            .ok_or_else(|| EngineError::Executor("the step returned no outputs".into()))?;
        let logits = logits_buf
            .read_prefix::<f32>(batch.logits_rows.len() * self.vocab)
            .map_err(exec_err("reading logits"))?;
        timeline::record(timeline::What::Step { decode }, span);
        let (host, execute, download) = (
            (exec_start - host_start).as_secs_f64(),
            (dl_start - exec_start).as_secs_f64(),
            dl_start.elapsed().as_secs_f64(),
        );
        if self.times.all.steps == 0 {
            self.memory.record("first step");
        }
        self.times.all.add(host, execute, download);
        if decode {
            self.times.decode.add(host, execute, download);
        }
        Ok(logits)
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn take_setup_time(&mut self) -> Duration {
        std::mem::take(&mut self.unreported_setup)
    }
}
