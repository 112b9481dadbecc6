//! What loaded programs keep resident: loads each serialized program given (entries of the
//! program cache, `<cache>/executables/*.pjrt`) on the serving plugin, one after another, and
//! prints the resident memory after each load and after dropping them all (each after
//! `malloc_trim`, so only what is still allocated counts).
//!
//! ```text
//! cargo run --release -p runtime --example program_memory -- .cache/executables/A.pjrt ...
//! PJRT_PLUGIN=... cargo run ...     # another plugin (one built with symbols, for heaptrack)
//! ```

use runtime::mem::{release_free_heap, MemSnapshot};
use runtime::pjrt::{Api, Client};

fn show(what: &str) {
    let m = MemSnapshot::now().unwrap_or_default();
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{what:40} resident {:7.1} MB  anonymous {:7.1} MB  file {:6.1} MB",
        mb(m.rss_bytes),
        mb(m.anon_bytes),
        mb(m.file_bytes)
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        return Err("give serialized programs: <cache>/executables/*.pjrt".into());
    }
    let client = Client::new(Api::load(&runtime::cache::serving_plugin_path())?)?;
    show("plugin loaded");
    let mut loaded = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f)?;
        loaded.push(client.deserialize(&bytes)?);
        drop(bytes);
        release_free_heap();
        show(&format!("+ {}", f.rsplit('/').next().unwrap_or(f)));
    }
    drop(loaded);
    release_free_heap();
    show("all dropped");
    Ok(())
}
