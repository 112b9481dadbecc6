//! Compiled programs kept on disk (`<cache>/executables/<key>.pjrt`), so a program is compiled
//! once per plugin build and loaded on every later run: no compile time and none of the
//! compiler's memory in a serving process.
//!
//! The key is a SHA-256 over the plugin file (path, size, modification time), the platform's
//! version string, the serialized compile options and the program text: any change to one of
//! them is a different entry, and an entry the plugin cannot load (truncated, or from another
//! build that kept the same file identity) is compiled again and replaced.

use crate::pjrt::{Client, CompileOptions, Executable, PjrtError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// How a program was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Loaded from the cache.
    Loaded,
    /// Compiled now (and stored, when the cache folder is writable).
    Compiled,
}

/// The on-disk program cache of one folder, holding at most [`ExecutableCache::limit_bytes`]
/// (the least recently used entries go first).
#[derive(Clone, Debug)]
pub struct ExecutableCache {
    dir: PathBuf,
    limit_bytes: u64,
}

/// The default bound of a cache folder: a step program of a small model is ~3 MB.
pub const DEFAULT_LIMIT_BYTES: u64 = 1 << 30;

impl ExecutableCache {
    /// The cache under [`super::cache_dir`] (`executables/`).
    pub fn default_dir() -> ExecutableCache {
        ExecutableCache::at(super::cache_dir().join("executables"))
    }

    /// A cache in `dir` (created on the first store).
    pub fn at(dir: impl Into<PathBuf>) -> ExecutableCache {
        ExecutableCache {
            dir: dir.into(),
            limit_bytes: DEFAULT_LIMIT_BYTES,
        }
    }

    /// The same folder bounded to `limit_bytes`.
    pub fn with_limit(mut self, limit_bytes: u64) -> ExecutableCache {
        self.limit_bytes = limit_bytes;
        self
    }

    /// The most the folder's entries may hold together.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// The folder entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of `program` compiled with `options` on `client`'s plugin.
    pub fn path_for(&self, client: &Client, program: &str, options: &CompileOptions) -> PathBuf {
        let mut h = Sha256::new();
        let plugin = client.plugin().path();
        h.update(plugin.as_os_str().as_encoded_bytes());
        h.update([0]);
        if let Ok(meta) = std::fs::metadata(plugin) {
            h.update(meta.len().to_le_bytes());
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.update(mtime.to_le_bytes());
        }
        h.update(client.platform_version().unwrap_or_default().as_bytes());
        h.update([0]);
        let opts = options.to_proto_bytes();
        h.update((opts.len() as u64).to_le_bytes());
        h.update(&opts);
        h.update(program.as_bytes());
        let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{key}.pjrt"))
    }

    /// Loads `program` from the cache, or compiles it with `options` and stores it. A store
    /// that fails (read-only folder, full disk) only costs the next run a compile.
    pub fn load_or_compile(
        &self,
        client: &Client,
        program: &str,
        options: &CompileOptions,
    ) -> Result<(Executable, Origin), PjrtError> {
        let path = self.path_for(client, program, options);
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(exe) = client.deserialize(&bytes) {
                // The modification time orders entries for eviction: this one was just used.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                return Ok((exe, Origin::Loaded));
            }
        }
        let exe = client.compile(program, options)?;
        if let Ok(bytes) = exe.serialize() {
            if store(&path, &bytes).is_ok() {
                self.evict(&path);
            }
        }
        Ok((exe, Origin::Compiled))
    }

    /// Removes the least recently used entries, never `keep`, until the folder holds at most
    /// the limit. Entries another process removes meanwhile are skipped.
    fn evict(&self, keep: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pjrt"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.limit_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
            }
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees half
/// an entry.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}-{n}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADD: &str = r#"
func.func @main(%a: tensor<8xf32>, %b: tensor<8xf32>) -> tensor<8xf32> {
  %0 = stablehlo.add %a, %b : tensor<8xf32>
  return %0 : tensor<8xf32>
}
"#;

    fn client() -> Client {
        Client::from_default_plugin().expect("CPU plugin (run scripts/setup.sh)")
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kernelgen-exe-cache-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn run_add(exe: &Executable, client: &Client) -> Vec<f32> {
        let a: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..8).map(|i| 0.5 * i as f32).collect();
        let ba = client.buffer_from_host(&a, &[8]).unwrap();
        let bb = client.buffer_from_host(&b, &[8]).unwrap();
        exe.execute_borrowed(&[&ba, &bb]).unwrap()[0]
            .to_host()
            .unwrap()
    }

    #[test]
    fn a_program_compiles_once_then_loads_and_a_damaged_entry_is_replaced() {
        let client = client();
        let dir = scratch_dir("reuse");
        let cache = ExecutableCache::at(&dir);
        let opts = CompileOptions::new();
        let (first, origin) = cache.load_or_compile(&client, ADD, &opts).unwrap();
        assert_eq!(origin, Origin::Compiled);
        let want = run_add(&first, &client);
        assert_eq!(want, (0..8).map(|i| 1.5 * i as f32).collect::<Vec<_>>());
        let (second, origin) = cache.load_or_compile(&client, ADD, &opts).unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(run_add(&second, &client), want);

        let other = ADD.replace("add", "subtract");
        let entry = cache.path_for(&client, ADD, &opts);
        assert_ne!(
            entry,
            cache.path_for(&client, &other, &opts),
            "the text is in the key"
        );
        let (_, origin) = cache.load_or_compile(&client, &other, &opts).unwrap();
        assert_eq!(origin, Origin::Compiled, "another program is another entry");

        let bytes = std::fs::read(&entry).unwrap();
        std::fs::write(&entry, &bytes[..bytes.len() / 3]).unwrap();
        let (third, origin) = cache.load_or_compile(&client, ADD, &opts).unwrap();
        assert_eq!(
            origin,
            Origin::Compiled,
            "a truncated entry is compiled again"
        );
        assert_eq!(run_add(&third, &client), want);
        assert_eq!(
            std::fs::read(&entry).unwrap().len(),
            bytes.len(),
            "and replaced"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_folder_stays_within_its_limit_keeping_the_newest_entry() {
        let client = client();
        let dir = scratch_dir("limit");
        let opts = CompileOptions::new();
        let one = {
            let cache = ExecutableCache::at(&dir);
            cache.load_or_compile(&client, ADD, &opts).unwrap();
            std::fs::metadata(cache.path_for(&client, ADD, &opts))
                .unwrap()
                .len()
        };
        // Room for two entries of about this size: the third compile evicts the oldest.
        let cache = ExecutableCache::at(&dir).with_limit(2 * one + one / 2);
        let programs: Vec<String> = ["subtract", "multiply", "maximum"]
            .iter()
            .map(|op| ADD.replace("add", op))
            .collect();
        for p in &programs {
            std::thread::sleep(std::time::Duration::from_millis(20));
            cache.load_or_compile(&client, p, &opts).unwrap();
        }
        let held: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(
            held <= cache.limit_bytes(),
            "{held} > {}",
            cache.limit_bytes()
        );
        assert!(
            !cache.path_for(&client, ADD, &opts).exists(),
            "oldest evicted"
        );
        assert!(
            cache.path_for(&client, &programs[2], &opts).exists(),
            "newest kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
