//! `kernelgen check --matrix FILE`: many configs x targets, with expected verdicts (a CI gate).
//!
//! ```toml
//! [defaults]                    # flags for every entry, named as on the command line
//! preset = "llama3-8b"
//!
//! [[check]]
//! name = "llama3-8b serving, page 64"
//! targets = ["v5e", "v5p", "v6e"]
//! q = 16
//! kv = 16
//! page-size = 64
//! expect = "fits"               # fits (default) | does-not-fit
//! ```

use super::check::{request, EntryArgs, EXIT_NO_FIT, EXIT_UNCERTAIN};
use super::exit;
use anyhow::{bail, Context};
use clap::Parser;
use kernelgen::target::fmt_bytes;
use kernelgen::vmem::{check, Verdict};
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Row {
    name: String,
    target: String,
    verdict: Verdict,
    expect: Verdict,
    total_bytes: u64,
    limit_bytes: u64,
    ok: bool,
}

fn flag_args(table: &toml::Table, skip: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (k, v) in table {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            toml::Value::Boolean(true) => out.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => out.extend([flag, s.clone()]),
            toml::Value::Integer(i) => out.extend([flag, i.to_string()]),
            toml::Value::Float(f) => out.extend([flag, f.to_string()]),
            other => bail!("'{k}': unsupported value {other}"),
        }
    }
    Ok(out)
}

fn parse_expect(s: &str) -> anyhow::Result<Verdict> {
    Ok(match s {
        "fits" => Verdict::Fits,
        "does-not-fit" => Verdict::DoesNotFit,
        other => bail!("expect = '{other}': use fits or does-not-fit"),
    })
}

pub fn run(path: &Path, json: bool) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let defaults = match doc.get("defaults") {
        Some(toml::Value::Table(t)) => t.clone(),
        None => toml::Table::new(),
        Some(_) => bail!("{}: [defaults] must be a table", path.display()),
    };
    let Some(toml::Value::Array(entries)) = doc.get("check") else {
        bail!("{}: no [[check]] entries", path.display());
    };
    let mut rows = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let toml::Value::Table(entry) = e else {
            bail!("check #{i} is not a table")
        };
        let name = entry
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("unnamed")
            .to_string();
        let ctx = || format!("{}: check '{name}'", path.display());
        let targets: Vec<String> = match entry.get("targets") {
            Some(toml::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => bail!(
                "{}: 'targets' must be a list such as [\"v5p\", \"v6e\"]",
                ctx()
            ),
        };
        let expect = parse_expect(
            entry
                .get("expect")
                .and_then(|v| v.as_str())
                .unwrap_or("fits"),
        )
        .with_context(ctx)?;
        let mut merged = defaults.clone();
        merged.extend(entry.clone());
        let base = flag_args(&merged, &["name", "targets", "expect"]).with_context(ctx)?;
        for target in targets {
            let mut argv = base.clone();
            argv.extend(["--target".to_string(), target.clone()]);
            let parsed = EntryArgs::try_parse_from(&argv).map_err(|e| {
                anyhow::anyhow!("{}: {}", ctx(), e.to_string().lines().next().unwrap_or(""))
            })?;
            let resolved = request(&parsed.kernel, &parsed.opts).with_context(ctx)?;
            let r = check(&resolved.request()).with_context(ctx)?;
            rows.push(Row {
                name: name.clone(),
                target,
                verdict: r.verdict,
                expect,
                total_bytes: r.total_bytes,
                limit_bytes: r.limit_bytes,
                ok: r.verdict == expect,
            });
        }
    }
    let failed = rows
        .iter()
        .any(|r| !r.ok && r.verdict != Verdict::Uncertain);
    let uncertain = rows
        .iter()
        .any(|r| !r.ok && r.verdict == Verdict::Uncertain);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "rows": rows, "passed": !failed && !uncertain })
            )?
        );
    } else {
        let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        println!(
            "{:<w$} {:<5} {:>12} {:>12}  {:<13} {:<13}",
            "check", "tgt", "total", "limit", "verdict", "expected"
        );
        for r in &rows {
            println!(
                "{:<w$} {:<5} {:>12} {:>12}  {:<13} {:<13} {}",
                r.name,
                r.target,
                fmt_bytes(r.total_bytes),
                fmt_bytes(r.limit_bytes),
                r.verdict.to_string(),
                r.expect.to_string(),
                if r.ok { "ok" } else { "MISMATCH" }
            );
        }
        println!(
            "{} checks, {} mismatches",
            rows.len(),
            rows.iter().filter(|r| !r.ok).count()
        );
    }
    Ok(if failed {
        EXIT_NO_FIT
    } else if uncertain {
        EXIT_UNCERTAIN
    } else {
        exit::OK
    })
}
