//! The `ampoule` command line: `demo`, `inspect`, `verify`, `run`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ampoule::host::guard::prefix;
use ampoule::host::manifest::{ArgKind, GlobalSource, Manifest};
use ampoule::host::{Bindings, Host, HostConfig, Impl};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ampoule",
    version,
    about = "Compile tensor programs into packages; run packages sandboxed on native kernels"
)]
struct Cli {
    /// Log what happens (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace the built-in model, compile it, save the package, reopen and
    /// run it in a fresh process, and print outputs and timings.
    Demo {
        /// Where to save the package (default: a temporary directory).
        #[arg(long)]
        package: Option<PathBuf>,
        /// Run the package with reference kernels only.
        #[arg(long)]
        reference: bool,
    },
    /// Show a package's functions, entries, guards, kernels, globals, sizes
    /// and digests (after full verification).
    Inspect {
        package: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fully verify a package; exit status 0 only if it passes.
    Verify { package: PathBuf },
    /// Run a function of a package on `.npy` inputs; write `<output>.npy`
    /// files.
    Run {
        package: PathBuf,
        /// Function to call (default: the package's only function).
        #[arg(long)]
        function: Option<String>,
        /// An input, as NAME=FILE.npy; repeat for each input.
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// A host-bound global, as NAME=FILE.npy.
        #[arg(long = "bind", value_name = "NAME=FILE")]
        binds: Vec<String>,
        /// Directory for the outputs.
        #[arg(long)]
        output_dir: PathBuf,
        /// Use reference kernels only.
        #[arg(long)]
        reference: bool,
    },
    /// Internal: time, in this fresh process, `Host::new` and `open` of the
    /// demo package to its first result; prints `host_ns open_to_first_ns`
    /// (used by the cold-start benchmark).
    #[command(hide = true)]
    ColdStart { package: PathBuf },
    /// Internal: open a saved demo package and run it (the second process of
    /// `demo`).
    #[command(hide = true)]
    DemoRun {
        package: PathBuf,
        #[arg(long)]
        output_dir: PathBuf,
        #[arg(long)]
        reference: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if cli.verbose > 0 {
        let level = match cli.verbose {
            1 => "info",
            2 => "debug",
            _ => "trace",
        };
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                "ampoule={level},ampoule_host={level},ampoule_compiler={level}"
            )))
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Demo { package, reference } => ampoule::demo::cli_demo(package, reference),
        Command::DemoRun {
            package,
            output_dir,
            reference,
        } => ampoule::demo::cli_demo_run(&package, &output_dir, reference),
        Command::ColdStart { package } => ampoule::demo::cli_cold_start(&package),
        Command::Inspect { package, json } => inspect(&package, json),
        Command::Verify { package } => verify(&package),
        Command::Run {
            package,
            function,
            inputs,
            binds,
            output_dir,
            reference,
        } => run(&package, function, &inputs, &binds, &output_dir, reference),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn host(reference: bool) -> Result<Host> {
    let config = HostConfig {
        kernels: if reference {
            Impl::Reference
        } else {
            Impl::Optimized
        },
        ..HostConfig::default()
    };
    Ok(Host::new(config)?)
}

fn file_sizes(dir: &Path, m: &Manifest) -> Result<Vec<(String, String, u64)>> {
    let d = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .with_context(|| format!("cannot open `{}`", dir.display()))?;
    let mut out = Vec::new();
    for (name, digest) in &m.files {
        let len = d.metadata(name).map(|md| md.len()).unwrap_or(0);
        out.push((name.clone(), digest.clone(), len));
    }
    Ok(out)
}

fn inspect(dir: &Path, json: bool) -> Result<()> {
    let host = host(false)?;
    let m = host
        .verify(dir)
        .with_context(|| format!("package `{}` failed verification", dir.display()))?;
    let files = file_sizes(dir, &m)?;
    if json {
        let files: serde_json::Map<String, serde_json::Value> = files
            .iter()
            .map(|(n, d, l)| (n.clone(), serde_json::json!({ "sha256": d, "bytes": l })))
            .collect();
        let out = serde_json::json!({ "manifest": m, "files": files });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "package {}  (format {}, contract {})",
        dir.display(),
        m.format,
        m.abi.wit
    );
    println!("kernels: {}", m.abi.kernels.join(", "));
    println!("globals ({}):", m.globals.len());
    for (i, g) in m.globals.iter().enumerate() {
        let source = match &g.source {
            GlobalSource::Weight { file, tensor } => {
                format!("weight `{tensor}` in {}", short(file))
            }
            GlobalSource::Bound => "bound by the application at load".into(),
        };
        println!("  [{i}] {} {}{:?}  {source}", g.name, g.dtype, g.shape);
    }
    for f in &m.functions {
        let sig = |args: &[ampoule::host::manifest::ArgDecl]| {
            args.iter()
                .map(|a| match &a.kind {
                    ArgKind::Tensor { dtype, rank } => format!("{}: {dtype} rank {rank}", a.name),
                    ArgKind::Scalar { dtype } => format!("{}: {dtype} scalar", a.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "function `{}` ({}) -> ({})  program {}",
            f.name,
            sig(&f.signature.inputs),
            sig(&f.signature.outputs),
            prefix(&f.program_hash, 16)
        );
        for (ei, e) in f.entries.iter().enumerate() {
            let bytes: u64 = e
                .buffers
                .iter()
                .map(|b| b.shape.iter().product::<u64>() * b.dtype.size() as u64)
                .sum();
            println!(
                "  entry {ei}: wrapper {}  {} kernels, {} globals, {} buffers ({bytes} bytes)",
                short(&e.wrapper),
                e.kernels.len(),
                e.globals.len(),
                e.buffers.len()
            );
            for g in &e.guards {
                println!("    guard  {}", g.describe(&f.signature, &m.globals));
            }
            for (k, ku) in e.kernels.iter().enumerate() {
                let attrs = if ku.attrs.is_empty() {
                    String::new()
                } else {
                    format!(" {}", serde_json::to_string(&ku.attrs)?)
                };
                println!("    kernel [{k}] {}{attrs}", ku.kernel);
            }
            if !e.globals.is_empty() {
                let names: Vec<String> = e
                    .globals
                    .iter()
                    .map(|&g| m.globals[g as usize].name.clone())
                    .collect();
                println!("    globals {}", names.join(", "));
            }
        }
    }
    println!("files:");
    let mut total = 0;
    for (name, digest, len) in &files {
        total += len;
        println!(
            "  {name:<90} {len:>12} bytes  sha256 {}",
            prefix(digest, 16)
        );
    }
    println!("total {total} bytes");
    Ok(())
}

fn short(s: &str) -> String {
    if s.chars().count() > 20 {
        format!("{}…", prefix(s, 16))
    } else {
        s.to_string()
    }
}

fn verify(dir: &Path) -> Result<()> {
    let host = host(false)?;
    let start = Instant::now();
    let m = host
        .verify(dir)
        .with_context(|| format!("package `{}` failed verification", dir.display()))?;
    let entries: usize = m.functions.iter().map(|f| f.entries.len()).sum();
    println!(
        "ok: {} function(s), {entries} entr{}, {} file(s) verified in {:.1} ms",
        m.functions.len(),
        if entries == 1 { "y" } else { "ies" },
        m.files.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn parse_pair(s: &str) -> Result<(&str, &Path)> {
    match s.split_once('=') {
        Some((n, f)) if !n.is_empty() && !f.is_empty() => Ok((n, Path::new(f))),
        _ => bail!("`{s}` must look like NAME=FILE.npy"),
    }
}

fn run(
    dir: &Path,
    function: Option<String>,
    inputs: &[String],
    binds: &[String],
    out_dir: &Path,
    reference: bool,
) -> Result<()> {
    let host = host(reference)?;
    let mut bindings = Bindings::new();
    for b in binds {
        let (name, file) = parse_pair(b)?;
        bindings.insert(name, ampoule::npy::read(file)?);
    }
    let t0 = Instant::now();
    let pkg = host
        .open(dir, bindings)
        .with_context(|| format!("cannot open package `{}`", dir.display()))?;
    let opened = t0.elapsed();
    let m = pkg.manifest();
    let function = match function {
        Some(f) => f,
        None if m.functions.len() == 1 => m.functions[0].name.clone(),
        None => bail!(
            "package has {} functions; pick one with --function ({})",
            m.functions.len(),
            m.functions
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut named = Vec::new();
    for i in inputs {
        let (name, file) = parse_pair(i)?;
        named.push((name, ampoule::npy::read(file)?));
    }
    let sig = m.function(&function).map(|f| f.signature.clone());
    let t1 = Instant::now();
    let outputs = pkg.call_named(&function, &named)?;
    let called = t1.elapsed();
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create `{}`", out_dir.display()))?;
    let sig = sig.context("function vanished")?;
    for (decl, t) in sig.outputs.iter().zip(&outputs) {
        let path = out_dir.join(format!("{}.npy", decl.name));
        ampoule::npy::write(&path, t)?;
        println!("{} {} -> {}", decl.name, t.meta(), path.display());
    }
    eprintln!(
        "open {:.2} ms, call {:.2} ms",
        opened.as_secs_f64() * 1e3,
        called.as_secs_f64() * 1e3
    );
    Ok(())
}
