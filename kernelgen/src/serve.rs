//! Starting to serve a model: load it, pick and check its kernel, validate the engine config,
//! upload the weights ([`start`]); and the check that a kernel artifact fits the model it is
//! asked to serve.

use crate::artifact::Artifact;
use crate::config::{Dtype, Schedule};
use crate::step::executor::ProgramSetup;
use crate::step::program::{AttentionChoice, BlockSizes, KernelForm};
use crate::step::{default_buckets, DeviceExecutor, KernelSource, StepSource};
use crate::tune::{self, table};
use runtime::model::LlamaConfig;

/// A kernel artifact that does not fit the model: names the field, both values, and the fix.
#[derive(Debug, thiserror::Error)]
#[error("kernel artifact {artifact} does not match the model: {field} is {kernel} in the kernel but {model} in the model; build one with `{fix}`")]
pub struct KernelMismatch {
    pub artifact: String,
    pub field: &'static str,
    pub kernel: String,
    pub model: String,
    pub fix: String,
}

/// Refuses an artifact whose heads, head_dim, page size or dtype differ from what the engine
/// runs (the call shapes may differ: the kernel is re-instantiated at each bucket's shapes).
pub fn check_artifact(
    a: &Artifact,
    m: &LlamaConfig,
    page_size: usize,
    model_dtype: Dtype,
) -> Result<(), KernelMismatch> {
    let c = &a.manifest.config;
    let g = c.geometry();
    let checks: [(&'static str, String, String); 5] = [
        (
            "num_q_heads",
            g.num_q_heads.to_string(),
            m.num_q_heads.to_string(),
        ),
        (
            "num_kv_heads",
            g.num_kv_heads.to_string(),
            m.num_kv_heads.to_string(),
        ),
        ("head_dim", g.head_dim.to_string(), m.head_dim.to_string()),
        (
            "page_size",
            c.page_size().to_string(),
            page_size.to_string(),
        ),
        ("dtype", c.dtype().to_string(), model_dtype.to_string()),
    ];
    for (field, kernel, model) in checks {
        if kernel != model {
            return Err(KernelMismatch {
                artifact: a.dir.display().to_string(),
                field,
                kernel,
                model,
                fix: format!(
                    "kernelgen build --q {} --kv {} --num-q-heads {} --num-kv-heads {} --head-dim {} --page-size {page_size} --dtype {}",
                    c.q_block(),
                    c.kv_pages_block(),
                    m.num_q_heads,
                    m.num_kv_heads,
                    m.head_dim,
                    model_dtype.mlir()
                ),
            });
        }
    }
    Ok(())
}

use crate::artifact::ArtifactError;
use runtime::cache::executables::ExecutableCache;
use runtime::engine::{engine_plan, validate_config};
use runtime::engine::{Engine, EngineConfig, EngineError};
use runtime::mem::MemTrace;
use runtime::model::tokenizer::{IncrementalDecoder, Piece, Tokenizer};
use runtime::model::{ModelError, ModelFile};
use runtime::pjrt::{Api, Client, OptionValue, PjrtError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything `kernelgen generate` and the benchmarks need to start serving.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A `.gguf` file or a Hugging Face directory (config.json + safetensors + tokenizer.json).
    pub model: PathBuf,
    /// A kernel artifact directory; `None` emits a kernel with `blocks` for the model.
    pub kernel: Option<PathBuf>,
    /// Block sizes of the emitted kernels; `None`: from the tuned table (`kernelgen tune`),
    /// else [`crate::tune::FALLBACK`] with a warning.
    pub blocks: Option<BlockSizes>,
    pub engine: EngineConfig,
    pub kv_dtype: Dtype,
    /// The weight matrices' dtype on the device (`--weights`): bf16 halves the bytes each
    /// decode step reads; f32 (the default) computes with the checkpoint's values as loaded.
    pub weights_dtype: Dtype,
    pub plugin: PathBuf,
    /// Token buckets; `None`: powers of two up to max_tokens_per_round.
    pub buckets: Option<Vec<usize>>,
    /// Where compiled step programs are kept between runs; `None` compiles every run.
    pub program_cache: Option<ExecutableCache>,
    /// At most this many step programs loaded at once ([`ProgramSetup::max_loaded`]).
    pub max_loaded_programs: Option<usize>,
    /// Reuse full KV pages across requests with equal prefixes ([`Engine::enable_prefix_caching`]).
    pub prefix_caching: bool,
    /// Devices of tensor parallelism ([`crate::step::tp`]); 1: one device.
    pub tp: usize,
    /// The attention kernel's form for emitted kernels (an artifact's schedule is its own).
    pub attention: AttentionChoice,
}

/// Why serving could not start. Each is refused before any compile or device work.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Attention(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Kernel(#[from] Box<KernelMismatch>),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("PJRT plugin {path}")]
    Plugin { path: PathBuf, source: PjrtError },
    #[error(transparent)]
    Tune(#[from] tune::TuneError),
    #[error(transparent)]
    Tp(#[from] crate::step::tp::TpError),
}

/// A model file opened (config now, weights read as they are uploaded) and its tokenizer, from
/// a `.gguf` file or a Hugging Face directory.
pub fn open_model(path: &Path) -> Result<(ModelFile, Tokenizer), ModelError> {
    let model = ModelFile::open(path)?;
    if path.is_dir() {
        let tok_path = path.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(ModelError::Tokenizer(format!(
                "{} has no tokenizer.json (needed to encode prompts)",
                path.display()
            )));
        }
        Ok((model, Tokenizer::from_file(&tok_path)?))
    } else {
        Ok((model, Tokenizer::from_gguf(path)?))
    }
}

/// The attention kernel a step program links: the artifact at `kernel`, refused unless it
/// matches the model, page size and KV dtype; or, without one, kernels emitted with `blocks`.
/// Also says which, for logs.
pub fn kernel_source(
    kernel: Option<&Path>,
    blocks: BlockSizes,
    model: &LlamaConfig,
    page_size: usize,
    kv_dtype: Dtype,
) -> Result<(KernelSource, String), ServeError> {
    Ok(match kernel {
        Some(dir) => {
            let a = Artifact::open(dir)?;
            check_artifact(&a, model, page_size, kv_dtype).map_err(Box::new)?;
            let desc = format!("artifact {} ({})", dir.display(), a.manifest.config);
            (KernelSource::Artifact(Box::new(a)), desc)
        }
        None => (KernelSource::Blocks(blocks), format!("emitted {blocks}")),
    })
}

/// The block sizes `opts` serves with on `client`'s device: `opts.blocks`, else the tuned
/// table's entries for the model's shapes ([`tune::serving_blocks`]).
fn choose_blocks(
    opts: &ServeOptions,
    model: &LlamaConfig,
    client: &Client,
) -> Result<tune::Chosen, ServeError> {
    if let Some(blocks) = opts.blocks {
        return Ok(tune::Chosen {
            blocks,
            desc: format!("emitted {blocks}"),
            warning: None,
        });
    }
    let plugin_err = |source| ServeError::Plugin {
        path: opts.plugin.clone(),
        source,
    };
    let query = table::Query {
        device: client.platform_name().map_err(plugin_err)?,
        compiler: Some(table::compiler_id(client)),
        geometry: crate::config::Geometry {
            num_q_heads: model.num_q_heads as u32,
            num_kv_heads: model.num_kv_heads as u32,
            head_dim: model.head_dim as u32,
        },
        dtype: opts.kv_dtype,
        page_size: opts.engine.page_size as u32,
        max_model_len: opts.engine.max_seq_len as u32,
        sliding_window: None,
    };
    Ok(tune::serving_blocks(&table::Store::default_dir(), &query)?)
}

/// Refuses, before the weights are read, an engine whose weights + KV pool + runtime headroom
/// do not fit the host's available memory (a CPU plugin's device memory is the host's): the
/// "host memory" rule of [`runtime::plan`], naming the figures and the pages that would fit.
/// Under tensor parallelism every device's share (`shard`, `tp` of them) is in host memory.
fn check_host_memory(
    shard: &LlamaConfig,
    tp: usize,
    engine: &EngineConfig,
    kv_dtype: Dtype,
    weights_dtype: Dtype,
    split_head: bool,
) -> Result<(), EngineError> {
    let mut plan = engine_plan(engine);
    let tp = tp as u64;
    plan.kv_bytes_per_token = Some(
        tp * runtime::plan::kv_bytes_per_token(
            shard.num_kv_heads as u64,
            shard.head_dim as u64,
            kv_dtype.bytes(),
            shard.num_layers as u64,
        ),
    );
    let weight_bytes = crate::step::weights::weight_bytes(shard, weights_dtype, split_head);
    plan.weight_bytes = Some(tp * weight_bytes);
    plan.host_bytes = runtime::mem::available_host_bytes();
    plan.validate().map_err(EngineError::Config)
}

/// A started server: engine on the device, tokenizer, and what was loaded.
pub struct Served {
    pub engine: Engine<DeviceExecutor>,
    pub tokenizer: Tokenizer,
    pub model: runtime::model::LlamaConfig,
    /// "artifact out/rpa-q16-kv8" or "emitted q_block=8 kv_pages_block=8 (tuned: ...)".
    pub kernel: String,
    /// Set when a phase missed the tuned table: the fallback used and the tune command.
    pub kernel_warning: Option<String>,
    /// Opening the model, loading the plugin, uploading the weights and creating the pools;
    /// the programs compiled (or loaded) before the weights are not in it: their times are the
    /// executor's (`times.compile`).
    pub load_time: Duration,
}

/// A model opened for serving, its kernel checked against it, the engine config validated, the
/// plugin loaded, nothing compiled or uploaded yet: the caller can tokenize its prompts first and
/// say which step programs to compile before the weights ([`Opened::start`]).
pub struct Opened {
    opts: ServeOptions,
    model: ModelFile,
    pub tokenizer: Tokenizer,
    kernel: KernelSource,
    desc: String,
    /// Set when a phase missed the tuned table (printed once by the caller).
    pub kernel_warning: Option<String>,
    client: Client,
    memory: MemTrace,
    t0: Instant,
}

/// Opens the model and its tokenizer, checks the kernel against it, validates the engine
/// config, loads the plugin and checks the host memory: everything that can refuse a config
/// before any compile or upload.
pub fn open(opts: &ServeOptions) -> Result<Opened, ServeError> {
    let t0 = Instant::now();
    validate_config(&opts.engine)?;
    let mut memory = MemTrace::default();
    memory.record("start");
    let (model, tokenizer) = open_model(&opts.model)?;
    memory.record("model opened");
    // One device's model: what its kernel and tuned table are for.
    let shard = crate::step::tp::shard_config(&model.config, opts.tp)?;
    if let Some(dir) = &opts.kernel {
        // Refuse a mismatched artifact before loading the plugin.
        kernel_source(
            Some(dir),
            tune::FALLBACK,
            &shard,
            opts.engine.page_size,
            opts.kv_dtype,
        )?;
    }
    let plugin_err = |source| ServeError::Plugin {
        path: opts.plugin.clone(),
        source,
    };
    let api = Api::load(&opts.plugin).map_err(plugin_err)?;
    let client = client_for(&api, opts.tp).map_err(plugin_err)?;
    memory.record("plugin loaded");
    let chosen = match &opts.kernel {
        Some(_) => None,
        None => Some(choose_blocks(opts, &shard, &client)?),
    };
    let platform = client.platform_name().map_err(plugin_err)?;
    let host_kernels = client.plugin().host_kernels();
    // Emitted kernels take the form --attention resolves to; an artifact's schedule is its own,
    // and one holding the host kernel needs a plugin that runs it.
    let form = match &opts.kernel {
        None => opts
            .attention
            .resolve(&platform, host_kernels)
            .map_err(ServeError::Attention)?,
        Some(dir) => {
            if Artifact::open(dir)?.manifest.config.schedule() == Schedule::Host {
                let refused = |why: String| {
                    ServeError::Attention(format!(
                        "artifact {} holds the host kernel (built with --schedule host): {why}; \
                         build it with --schedule sequential or batched for this plugin",
                        dir.display()
                    ))
                };
                crate::step::program::host_kernel_available(&platform, host_kernels)
                    .map_err(refused)?;
            }
            KernelForm::Portable
        }
    };
    let (kernel, mut desc) = kernel_source(
        opts.kernel.as_deref(),
        BlockSizes {
            form,
            ..chosen.as_ref().map_or(tune::FALLBACK, |c| c.blocks)
        },
        &shard,
        opts.engine.page_size,
        opts.kv_dtype,
    )?;
    if let Some(c) = &chosen {
        desc = c.desc.clone();
        if form == KernelForm::Host {
            desc.push_str(", host kernel");
        }
    }
    let kernel_warning = chosen.and_then(|c| c.warning);
    if client.platform_name().map_err(plugin_err)? == "cpu" {
        check_host_memory(
            &shard,
            opts.tp,
            &opts.engine,
            opts.kv_dtype,
            opts.weights_dtype,
            crate::step::program::splits_head(opts.tp, opts.weights_dtype, form),
        )?;
    }
    Ok(Opened {
        opts: opts.clone(),
        model,
        tokenizer,
        kernel,
        desc,
        kernel_warning,
        client,
        memory,
        t0,
    })
}

/// The plugin's client for `tp` devices. The CPU plugin makes as many devices as it is asked
/// for (its `cpu_device_count` create option; other plugins have the devices they have, and the
/// executor refuses a `--tp` beyond them before any compile). With one device it also runs
/// programs synchronously, on the calling thread (`asynchronous = false`): the engine waits for
/// every step anyway, and handing each to the plugin's thread made the first kernel start ~70 us
/// later (`bench decode`'s step start, AMD EPYC, batch 1: 0.20-0.24 ms against 0.13-0.14).
/// Under `--tp` the devices' programs must run at once for their all-reduces, so they stay
/// asynchronous. A plugin that refuses the option serves as it is.
fn client_for(api: &Arc<Api>, tp: usize) -> Result<Client, PjrtError> {
    let client = Client::new(api.clone())?;
    if !client.platform_name().is_ok_and(|p| p == "cpu") {
        return Ok(client);
    }
    let devices = client.addressable_device_count();
    drop(client);
    if tp == 1 {
        let sync = [("asynchronous", OptionValue::Bool(false))];
        return Client::with_options(api.clone(), &sync).or_else(|_| Client::new(api.clone()));
    }
    let options = match devices < tp {
        true => vec![("cpu_device_count", OptionValue::Int(tp as i64))],
        false => vec![],
    };
    Client::with_options(api.clone(), &options)
}

/// [`open`], then [`Opened::start`] with every program compiled on first use.
pub fn start(opts: &ServeOptions) -> Result<Served, ServeError> {
    open(opts)?.start(Vec::new())
}

impl Opened {
    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.model.config
    }

    /// The prompt `text` as the model's chat template wraps one user message (`text` itself
    /// when the model has no template or `raw`), tokenized.
    pub fn encode_prompt(&self, text: &str, raw: bool) -> Result<Vec<u32>, ModelError> {
        match (&self.model.config.chat_template, raw) {
            (Some(t), false) => encode_chat(&self.tokenizer, t, &[("user", text)]),
            _ => self.tokenizer.encode(text, false),
        }
    }

    /// Compiles the programs of `before_weights` (steps as (tokens, decode-only)), uploads the
    /// weights and creates the KV pools. Other programs compile on first use of their bucket.
    pub fn start(self, before_weights: Vec<(usize, bool)>) -> Result<Served, ServeError> {
        let Opened {
            opts,
            model,
            tokenizer,
            kernel,
            desc,
            kernel_warning,
            client,
            mut memory,
            t0,
        } = self;
        let buckets = opts
            .buckets
            .clone()
            .unwrap_or_else(|| default_buckets(opts.engine.max_tokens_per_round));
        let source = StepSource {
            model: model.config.clone(),
            kernel,
            tp: opts.tp,
            weights: opts.weights_dtype,
        };
        let setup = ProgramSetup {
            cache: opts.program_cache.clone(),
            before_weights,
            max_loaded: opts.max_loaded_programs,
        };
        let mut exec = DeviceExecutor::with_programs(
            client,
            &model,
            &opts.engine,
            opts.kv_dtype,
            buckets,
            source,
            &setup,
        )?;
        let programs = Duration::from_secs_f64(exec.times.compile.values().sum());
        memory.stages.append(&mut exec.memory.stages);
        exec.memory = memory;
        let mut engine = Engine::new(opts.engine.clone(), exec)?;
        engine.set_stop_token_ids(model.config.eos_token_ids.clone());
        if opts.prefix_caching {
            engine.enable_prefix_caching();
        }
        let tok = tokenizer.clone();
        engine.set_detokenizer(Box::new(move |ids| {
            tok.decode(ids, true).unwrap_or_default()
        }));
        Ok(Served {
            engine,
            tokenizer,
            model: model.config,
            kernel: desc,
            kernel_warning,
            load_time: t0.elapsed().saturating_sub(programs),
        })
    }
}

/// `turns` (role, text) through the chat `template`, ready for the assistant's reply, tokenized:
/// the one way `generate` and the server turn messages into a prompt.
pub fn encode_chat<R: AsRef<str>, C: AsRef<str>>(
    tokenizer: &Tokenizer,
    template: &str,
    turns: &[(R, C)],
) -> Result<Vec<u32>, ModelError> {
    let text = tokenizer.apply_chat_template(template, turns, true)?;
    tokenizer.encode(&text, false)
}

/// The step programs, as (tokens, decode-only), that a run of `requests` (prompt tokens and
/// samples of each) uses first under `engine`: the first prefill step (every prompt packed up to
/// the token budget; a long prompt's last chunk too) and the decode step of every sample at
/// once. [`Opened::start`] compiles them before the weights are uploaded.
pub fn first_programs(engine: &EngineConfig, requests: &[(usize, usize)]) -> Vec<(usize, bool)> {
    let budget = engine.max_tokens_per_round.max(1);
    let total: usize = requests.iter().map(|&(len, _)| len).sum();
    let samples: usize = requests.iter().map(|&(_, n)| n.max(1)).sum();
    let mut steps = Vec::new();
    let mut add = |step: (usize, bool)| {
        if step.0 > 0 && !steps.contains(&step) {
            steps.push(step);
        }
    };
    if let [(len, _)] = requests {
        if *len > budget && len % budget != 0 {
            add((len % budget, false));
        }
    }
    match total.min(budget) {
        1 => add((1, true)),
        first => add((first, false)),
    }
    add((samples.min(engine.max_seqs), true));
    steps
}

/// One sample's text as its tokens arrive, for streaming: each new token is decoded with a few
/// before it ([`runtime::model::tokenizer::IncrementalDecoder`]), not the whole text again,
/// and the text is released up to [`streamable`]'s cut, so nothing at or past a stop string is
/// ever released.
#[derive(Debug, Default)]
pub struct TextStream {
    tokens: Vec<u32>,
    decoder: IncrementalDecoder,
    /// Decoded and not yet released: a tail that may still grow into a stop string.
    held: String,
    /// Bytes of text released so far.
    sent: usize,
}

impl TextStream {
    /// Adds `token`; returns the text it releases (often empty).
    pub fn push(
        &mut self,
        tok: &Tokenizer,
        token: u32,
        stops: &[String],
    ) -> Result<String, ModelError> {
        self.tokens.push(token);
        // Special tokens skipped, as in the engine's final text.
        if let Piece::Text(piece) = self.decoder.next(&self.tokens, |t| tok.decode(t, true))? {
            self.held += &piece;
        }
        let end = streamable(&self.held, stops);
        self.sent += end;
        Ok(self.held.drain(..end).collect())
    }

    /// What of the sample's final text (the engine's, cut before a stop string) has not been
    /// released yet.
    pub fn rest<'a>(&self, text: &'a str) -> &'a str {
        text.get(self.sent..).unwrap_or_default()
    }

    /// The tokens pushed so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
}

/// How much of `text` can be shown while generation goes on: all of it except an incomplete
/// final character and any tail that could still grow into a stop string.
pub fn streamable(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    if text.ends_with('\u{FFFD}') {
        // A partial UTF-8 sequence decodes to U+FFFD until its last byte arrives.
        end -= '\u{FFFD}'.len_utf8();
    }
    for stop in stops {
        if let Some(at) = text[..end].find(stop.as_str()) {
            end = at;
        }
        // The longest tail of text[..end] that is a proper prefix of the stop string.
        let held = (1..stop.len())
            .rev()
            .filter(|&k| stop.is_char_boundary(k) && k <= end)
            .find(|&k| text[..end].ends_with(&stop[..k]))
            .unwrap_or(0);
        end -= held;
    }
    end
}

#[cfg(test)]
mod streaming_tests {
    use super::streamable;

    /// Feeds `text` one character at a time, printing what `streamable` allows, as `stream` does.
    fn streamed(text: &str, stops: &[String]) -> String {
        let mut printed = 0;
        let mut shown = String::new();
        for (i, c) in text.char_indices() {
            let so_far = &text[..i + c.len_utf8()];
            let end = streamable(so_far, stops);
            if end > printed {
                shown.push_str(&so_far[printed..end]);
                printed = end;
            }
        }
        shown
    }

    #[test]
    fn never_streams_a_stop_string_or_past_it() {
        let stops = vec!["</s>".to_string(), "ab".to_string()];
        for text in [
            "hello</s> more",
            "xaab tail",
            "a</",
            "no stop here",
            "é</s>",
            "</s>",
        ] {
            let cut = stops
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
                .unwrap_or(text.len());
            let shown = streamed(text, &stops);
            assert!(
                text[..cut].starts_with(&shown),
                "{text:?}: streamed {shown:?}"
            );
            assert!(
                stops.iter().all(|s| !shown.contains(s.as_str())),
                "{text:?}"
            );
        }
        // Without stop strings everything complete is shown at once; a partial character is not.
        assert_eq!(streamable("abc", &[]), 3);
        assert_eq!(streamable("ab\u{FFFD}", &[]), 2);
        // A tail that may grow into a stop string waits.
        assert_eq!(streamable("hello</", &stops), 5);
    }

    /// Token by token through a real byte-level tokenizer (characters split across tokens):
    /// nothing at or past a stop string is released, and what is released plus the final
    /// text's rest is that text.
    #[test]
    fn a_text_stream_releases_the_text_before_a_stop_string() {
        use super::{TextStream, Tokenizer};
        let tok = Tokenizer::from_gguf(&runtime::cache::default_model_path())
            .expect("the cached SmolLM2 model (run scripts/setup.sh --model)");
        let text = "Grüße 🙂 one </s> two ab 日本語";
        let ids = tok.encode(text, false).unwrap();
        for stops in [
            vec![],
            vec!["</s>".to_string()],
            vec!["🙂 o".to_string(), "ab".to_string()],
            vec!["語".to_string()],
        ] {
            let cut = stops
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
                .unwrap_or(text.len());
            let mut stream = TextStream::default();
            let mut shown = String::new();
            for &id in &ids {
                shown += &stream.push(&tok, id, &stops).unwrap();
                assert!(text[..cut].starts_with(&shown), "{stops:?}: {shown:?}");
            }
            if stops.is_empty() {
                assert_eq!(shown, text);
            }
            shown += stream.rest(&text[..cut]);
            assert_eq!(shown, &text[..cut], "{stops:?}");
            assert_eq!(stream.tokens(), &ids[..]);
        }
    }
}

#[cfg(test)]
mod first_programs_tests {
    use super::*;

    fn engine(max_seqs: usize, budget: usize) -> EngineConfig {
        EngineConfig {
            max_seqs,
            max_pages: 64,
            page_size: 16,
            max_seq_len: 1024,
            max_tokens_per_round: budget,
        }
    }

    #[test]
    fn the_first_prefill_and_decode_steps_of_a_run() {
        // One prompt that fits the budget: its prefill, then one decoding sequence.
        assert_eq!(
            first_programs(&engine(32, 64), &[(30, 1)]),
            vec![(30, false), (1, true)]
        );
        // A long prompt: a full chunk and its last, shorter one.
        assert_eq!(
            first_programs(&engine(32, 64), &[(150, 1)]),
            vec![(22, false), (64, false), (1, true)]
        );
        // A one-token prompt is a decode step from the start.
        assert_eq!(
            first_programs(&engine(32, 64), &[(1, 2)]),
            vec![(1, true), (2, true)]
        );
        // Many prompts pack to the budget; decode holds every sample up to max_seqs.
        let many = vec![(20, 2); 40];
        assert_eq!(
            first_programs(&engine(32, 64), &many),
            vec![(64, false), (32, true)]
        );
        assert!(first_programs(&engine(32, 64), &[]).is_empty());
    }
}
