//! The `ampoule` command line: `demo`, `compile` (ONNX models), `inspect`,
//! `verify`, `run`, `test` (replay bundled samples), and package signing:
//! `keygen`, `sign`.
//!
//! `compile --bundle-samples` bundles, per entry, seeded random inputs of the
//! entry's example shapes (dynamic entries at their example size) with the
//! outputs reference kernels give for them: floats standard normal, integers
//! uniform in 0..=3 (small enough to be a valid index into any axis of size
//! 4 or more), bools fair coin flips, specialized scalars their value; the
//! seed is the entry's index, so recompiling gives the same package. `test`
//! replays them on this host's kernels and prints, per output, the worst
//! absolute and relative error against the output's tolerance; it fails if
//! any output is out of tolerance or the package has no samples.
//!
//! A package may hold several functions: `inspect` shows each one's
//! signature, the inputs it updates in place (`mutates: cache`), its entries
//! and the globals it uses (and which other functions share them); `run
//! --function F` picks one (an unknown `F` lists the package's functions).
//! `run` writes each output as `<output>.npy` and the new value of each
//! updated input as `<input>.npy`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ampoule::host::guard::prefix;
use ampoule::host::manifest::{ArgKind, GlobalSource, Manifest};
use ampoule::host::{
    Bindings, Host, HostConfig, Impl, PublicKey, SecretKey, SignatureStatus, TrustPolicy,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

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
    /// Compile an ONNX model into a new package: one entry per set of
    /// `--input` shapes.
    Compile {
        /// The `.onnx` model file (external data is not supported).
        model: PathBuf,
        /// Where to save the package (replaced atomically).
        #[arg(short, long, value_name = "PKG")]
        output: PathBuf,
        /// The size (and optionally dtype) of a graph input, as
        /// NAME=DIMS[:DTYPE] with DIMS like 1x3x224x224. Inputs not given
        /// take their static shape from the model; symbolic dims must be
        /// given. Repeating a NAME starts the next entry's set.
        #[arg(long = "input", value_name = "NAME=DIMS[:DTYPE]")]
        inputs: Vec<String>,
        /// Compile axis AXIS of input NAME as a symbolic dim: one entry
        /// serves every size from MIN to MAX (default 2 and 2^31 - 1), with
        /// the shapes derived from it computed by the wrapper. The size
        /// given by --input is the example the program is traced at.
        #[arg(long = "dynamic", value_name = "NAME.AXIS[=MIN..MAX]")]
        dynamic: Vec<String>,
        /// The function's name in the package.
        #[arg(long, default_value = "forward")]
        function: String,
        /// Bundle, per entry, seeded random sample inputs and the outputs
        /// reference kernels give for them, for `ampoule test` to replay on
        /// other hosts (floats standard normal, integers in 0..=3).
        #[arg(long)]
        bundle_samples: bool,
    },
    /// Replay a package's bundled samples (`compile --bundle-samples`) on
    /// this host's kernels: print each output's worst error against its
    /// tolerance; exit status 0 only if every output is within it.
    Test {
        package: PathBuf,
        /// Test only this function (default: all of them).
        #[arg(long)]
        function: Option<String>,
        /// A host-bound global, as NAME=FILE.npy or NAME=FILE.pb.
        #[arg(long = "bind", value_name = "NAME=FILE")]
        binds: Vec<String>,
        /// Replay on reference kernels instead of the optimized ones.
        #[arg(long)]
        reference: bool,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Show a package's functions, entries, guards, kernels, globals, sizes
    /// and digests (after full verification).
    Inspect {
        package: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Fully verify a package; exit status 0 only if it passes.
    Verify {
        package: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Make an ed25519 key pair for signing packages: writes KEY (the secret
    /// key, hex, readable only by you) and KEY.pub (the public key, hex).
    /// Never overwrites a file.
    Keygen {
        /// Where to write the secret key; the public key goes to KEY.pub.
        #[arg(short, long, value_name = "KEY")]
        output: PathBuf,
    },
    /// Sign a package (after full verification): adds the key's signature
    /// of the manifest digest to the package's `signature.json`.
    Sign {
        package: PathBuf,
        /// The secret key file written by `ampoule keygen`.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
    },
    /// Run a function of a package on `.npy` (or ONNX `TensorProto` `.pb`)
    /// inputs; write `<output>.npy` files, and `<input>.npy` for every input
    /// the function updates in place.
    Run {
        package: PathBuf,
        /// Function to call (default: the package's only function).
        #[arg(long)]
        function: Option<String>,
        /// An input, as NAME=FILE.npy or NAME=FILE.pb (an ONNX TensorProto);
        /// repeat for each input.
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// A host-bound global, as NAME=FILE.npy or NAME=FILE.pb.
        #[arg(long = "bind", value_name = "NAME=FILE")]
        binds: Vec<String>,
        /// Directory for the outputs.
        #[arg(long)]
        output_dir: PathBuf,
        /// Use reference kernels only.
        #[arg(long)]
        reference: bool,
        #[command(flatten)]
        trust: TrustArgs,
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

/// The trust policy of `inspect`, `verify` and `run`. Without options,
/// signatures are not consulted.
#[derive(Args)]
struct TrustArgs {
    /// Trust packages signed by this public key (a `.pub` file from
    /// `ampoule keygen`); repeat for more keys. A signature present must then
    /// verify and be by a trusted key.
    #[arg(long = "trust", value_name = "PUBKEY_FILE")]
    trust: Vec<PathBuf>,
    /// Refuse packages that are not signed by a trusted key.
    #[arg(long)]
    require_signature: bool,
}

impl TrustArgs {
    fn policy(&self) -> Result<TrustPolicy> {
        if self.require_signature && self.trust.is_empty() {
            bail!("--require-signature needs at least one --trust PUBKEY_FILE (a policy that trusts no key refuses every package)");
        }
        Ok(TrustPolicy {
            trusted: self
                .trust
                .iter()
                .map(|p| read_public_key(p))
                .collect::<Result<_>>()?,
            require_signature: self.require_signature,
        })
    }
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
        Command::Compile {
            model,
            output,
            inputs,
            dynamic,
            function,
            bundle_samples,
        } => compile_onnx(
            &model,
            &output,
            &inputs,
            &dynamic,
            &function,
            bundle_samples,
        ),
        Command::Test {
            package,
            function,
            binds,
            reference,
            trust,
        } => test(&package, function.as_deref(), &binds, reference, &trust),
        Command::Inspect {
            package,
            json,
            trust,
        } => inspect(&package, json, &trust),
        Command::Verify { package, trust } => verify(&package, &trust),
        Command::Keygen { output } => keygen(&output),
        Command::Sign { package, key } => sign(&package, &key),
        Command::Run {
            package,
            function,
            inputs,
            binds,
            output_dir,
            reference,
            trust,
        } => run(
            &package,
            function,
            &inputs,
            &binds,
            &output_dir,
            reference,
            &trust,
        ),
    };
    if let Err(e) = result {
        eprintln!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text
/// the message before it already includes (our library errors often quote
/// their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
    }
    out
}

fn host(reference: bool, trust: &TrustArgs) -> Result<Host> {
    let config = HostConfig {
        kernels: if reference {
            Impl::Reference
        } else {
            Impl::Optimized
        },
        trust: trust.policy()?,
        ..HostConfig::default()
    };
    Ok(Host::new(config)?)
}

/// Largest key file read (a key is 64 hex digits).
const MAX_KEY_FILE_BYTES: u64 = 1024;

fn read_key_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read key file `{}`", path.display()))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        bail!(
            "key file `{}` is too large to be a key (64 hex digits)",
            path.display()
        );
    }
    Ok(text)
}

fn read_public_key(path: &Path) -> Result<PublicKey> {
    PublicKey::from_hex(&read_key_file(path)?).with_context(|| {
        format!(
            "`{}` is not an ampoule public key file (from `ampoule keygen`, KEY.pub)",
            path.display()
        )
    })
}

fn read_secret_key(path: &Path) -> Result<SecretKey> {
    if path.extension().is_some_and(|e| e == "pub") {
        bail!(
            "`{}` looks like a public key; sign with the secret key file (the one without `.pub`)",
            path.display()
        );
    }
    SecretKey::from_hex(&read_key_file(path)?).with_context(|| {
        format!(
            "`{}` is not an ampoule secret key file (from `ampoule keygen`)",
            path.display()
        )
    })
}

/// `KEY` -> `KEY.pub`.
fn public_key_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Creates `path`, which must not exist, with `contents`; on Unix with
/// permissions `mode` from the start (never briefly readable by others).
fn write_new_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write `{}`", path.display()))
}

fn keygen(secret_path: &Path) -> Result<()> {
    let public_path = public_key_path(secret_path);
    for p in [secret_path, public_path.as_path()] {
        if p.symlink_metadata().is_ok() {
            bail!(
                "`{}` already exists; keygen never overwrites a key (choose another name, or remove it first)",
                p.display()
            );
        }
    }
    let key = SecretKey::generate()?;
    write_new_file(secret_path, &format!("{}\n", key.to_hex()), 0o600)?;
    if let Err(e) = write_new_file(&public_path, &format!("{}\n", key.public_key()), 0o644) {
        let _ = std::fs::remove_file(secret_path);
        return Err(e);
    }
    println!("secret key: {}  (keep it private)", secret_path.display());
    println!(
        "public key: {}  {}",
        public_path.display(),
        key.public_key()
    );
    Ok(())
}

fn sign(dir: &Path, key_path: &Path) -> Result<()> {
    let key = read_secret_key(key_path)?;
    let host = Host::new(HostConfig::default())?;
    let out = host
        .sign(dir, &key)
        .with_context(|| format!("cannot sign package `{}`", dir.display()))?;
    println!(
        "signed package {} (manifest sha256 {}) with key {}",
        dir.display(),
        out.digest,
        out.signer
    );
    for k in &out.dropped {
        println!("  removed a signature by {k}, which no longer matched the package");
    }
    if out.signers.len() > 1 {
        for k in out.signers.iter().filter(|k| **k != out.signer) {
            println!("  also signed by {k}");
        }
    }
    Ok(())
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

fn inspect(dir: &Path, json: bool, trust: &TrustArgs) -> Result<()> {
    let host = host(false, trust)?;
    let m = host
        .verify(dir)
        .with_context(|| format!("package `{}` failed verification", dir.display()))?;
    let files = file_sizes(dir, &m)?;
    let status = host.signature_status(dir)?;
    if json {
        let files: serde_json::Map<String, serde_json::Value> = files
            .iter()
            .map(|(n, d, l)| (n.clone(), serde_json::json!({ "sha256": d, "bytes": l })))
            .collect();
        let signature = match &status {
            SignatureStatus::Unsigned => serde_json::json!({ "status": "unsigned" }),
            SignatureStatus::Signed { signers } => serde_json::json!({
                "status": "signed",
                "signers": signers.iter().map(PublicKey::to_hex).collect::<Vec<_>>(),
            }),
            SignatureStatus::Invalid { reason } => {
                serde_json::json!({ "status": "invalid", "reason": reason })
            }
        };
        let functions: Vec<serde_json::Value> = m
            .functions
            .iter()
            .map(|f| {
                let globals: Vec<serde_json::Value> = function_globals(&m, f)
                    .into_iter()
                    .map(|(g, shared)| {
                        serde_json::json!({
                            "global": g,
                            "name": m.globals[g as usize].name,
                            "shared_with": shared,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": f.name,
                    "signature": fmt_signature(&f.signature),
                    "mutates": f.signature.mutated_names(),
                    "entries": f.entries.len(),
                    "globals": globals,
                })
            })
            .collect();
        let out = serde_json::json!({
            "manifest": m,
            "functions": functions,
            "files": files,
            "signature": signature,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "package {}  (format {}, contract {})",
        dir.display(),
        m.format,
        m.abi.wit
    );
    match &status {
        SignatureStatus::Unsigned => println!("signature: none"),
        SignatureStatus::Signed { signers } => {
            for k in signers {
                println!("signature: signed by {k} (verifies)");
            }
        }
        SignatureStatus::Invalid { reason } => println!("signature: INVALID: {reason}"),
    }
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
        println!(
            "function `{}` {}  program {}",
            f.name,
            fmt_signature(&f.signature),
            prefix(&f.program_hash, 16)
        );
        if !f.signature.mutates.is_empty() {
            println!("  mutates: {}", f.signature.mutated_names().join(", "));
        }
        let globals: Vec<String> = function_globals(&m, f)
            .into_iter()
            .map(|(g, shared)| {
                let name = &m.globals[g as usize].name;
                if shared.is_empty() {
                    name.clone()
                } else {
                    format!("{name} (shared with {})", shared.join(", "))
                }
            })
            .collect();
        if !globals.is_empty() {
            println!("  globals: {}", globals.join(", "));
        }
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
            let dim = |&[i, a]: &[u32; 2]| {
                let name = f
                    .signature
                    .inputs
                    .get(i as usize)
                    .map_or_else(|| format!("input#{i}"), |x| x.name.clone());
                format!("{name}.shape[{a}]")
            };
            for s in &e.symbols {
                let dims: Vec<String> = s.dims.iter().map(dim).collect();
                println!("    symbolic {}: {}", dims.join(" = "), s.why);
            }
            if let Some(s) = &e.samples {
                let tols: Vec<String> = s
                    .tolerances
                    .iter()
                    .map(|(n, t)| format!("{n} rtol {:.1e} atol {:.1e}", t.rtol, t.atol))
                    .collect();
                println!("    samples {}  {}", short(&s.file), tols.join(", "));
            }
            for (pi, p) in e.paths.iter().enumerate() {
                let values: Vec<String> = p.iter().map(ToString::to_string).collect();
                println!("    path {pi}: breaks read [{}]", values.join(", "));
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

/// `(x: f32 rank 2, k: i64 scalar) -> (y: f32 rank 2)`.
fn fmt_signature(sig: &ampoule::host::manifest::Signature) -> String {
    let args = |args: &[ampoule::host::manifest::ArgDecl]| {
        args.iter()
            .map(|a| match &a.kind {
                ArgKind::Tensor { dtype, rank } => format!("{}: {dtype} rank {rank}", a.name),
                ArgKind::Scalar { dtype } => format!("{}: {dtype} scalar", a.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", args(&sig.inputs), args(&sig.outputs))
}

/// The package globals `f`'s entries use, in index order, each with the
/// other functions that use it too.
fn function_globals(
    m: &Manifest,
    f: &ampoule::host::manifest::FunctionDecl,
) -> Vec<(u32, Vec<String>)> {
    let uses = |f: &ampoule::host::manifest::FunctionDecl, g: u32| {
        f.entries.iter().any(|e| e.globals.contains(&g))
    };
    let mut used: Vec<u32> = f
        .entries
        .iter()
        .flat_map(|e| e.globals.iter().copied())
        .collect();
    used.sort_unstable();
    used.dedup();
    used.into_iter()
        .map(|g| {
            let shared = m
                .functions
                .iter()
                .filter(|o| o.name != f.name && uses(o, g))
                .map(|o| format!("`{}`", o.name))
                .collect();
            (g, shared)
        })
        .collect()
}

fn short(s: &str) -> String {
    if s.chars().count() > 20 {
        format!("{}…", prefix(s, 16))
    } else {
        s.to_string()
    }
}

fn verify(dir: &Path, trust: &TrustArgs) -> Result<()> {
    let host = host(false, trust)?;
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
        _ => bail!("`{s}` must look like NAME=FILE.npy (or NAME=FILE.pb)"),
    }
}

/// Reads a tensor file: an ONNX `TensorProto` if it ends in `.pb`, else
/// `.npy`.
fn read_tensor(path: &Path) -> Result<ampoule::kernels::Tensor> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("pb"))
    {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        return ampoule::compiler::onnx::tensor::decode(&bytes).map_err(|m| {
            anyhow::anyhow!("`{}` is not a usable TensorProto file: {m}", path.display())
        });
    }
    ampoule::npy::read(path)
}

/// Groups `--input NAME=DIMS[:DTYPE]` flags into one set per entry: a name
/// already in the current set starts the next set.
fn input_sets(
    flags: &[String],
) -> Result<Vec<std::collections::BTreeMap<String, ampoule::compiler::onnx::InputSpec>>> {
    let mut sets = vec![std::collections::BTreeMap::new()];
    for f in flags {
        let (name, spec) =
            ampoule::compiler::onnx::InputSpec::parse(f).map_err(anyhow::Error::msg)?;
        if sets.last().is_some_and(|s| s.contains_key(&name)) {
            sets.push(std::collections::BTreeMap::new());
        }
        if let Some(set) = sets.last_mut() {
            set.insert(name, spec);
        }
    }
    Ok(sets)
}

/// Parses `NAME.AXIS[=MIN..MAX]`.
fn dynamic_flag(flag: &str) -> Result<(String, usize, u64, u64)> {
    let bad = || {
        anyhow::anyhow!(
            "--dynamic `{flag}`: expected NAME.AXIS or NAME.AXIS=MIN..MAX (e.g. `x.0=2..512`)"
        )
    };
    let (dim, range) = match flag.split_once('=') {
        Some((d, r)) => (d, Some(r)),
        None => (flag, None),
    };
    let (name, axis) = dim.rsplit_once('.').ok_or_else(bad)?;
    let axis: usize = axis.parse().map_err(|_| bad())?;
    let (min, max) = match range {
        None => (2, ampoule::compiler::dynamic::MAX_SIZE),
        Some(r) => {
            let (a, b) = r.split_once("..").ok_or_else(bad)?;
            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)
        }
    };
    if name.is_empty() || min > max {
        return Err(bad());
    }
    Ok((name.to_string(), axis, min, max))
}

fn compile_onnx(
    model: &Path,
    out: &Path,
    flags: &[String],
    dynamic: &[String],
    function: &str,
    bundle_samples: bool,
) -> Result<()> {
    use ampoule::compiler::Compiler;
    let t0 = Instant::now();
    let m = ampoule::compiler::onnx::load_file(model)
        .with_context(|| format!("cannot import `{}`", model.display()))?;
    let sets = input_sets(flags)?;
    let mut def = m.function(function);
    for flag in dynamic {
        let (name, axis, min, max) = dynamic_flag(flag)?;
        if !m.inputs().iter().any(|i| i.name == name) {
            bail!("--dynamic `{flag}`: the model has no input `{name}`");
        }
        def = def.dynamic_range(&name, axis, min, max);
    }
    let host = Host::new(HostConfig::default())?;
    let mut compiler = Compiler::builder(host).function(def).create()?;
    for (i, set) in sets.iter().enumerate() {
        let examples = m
            .examples(set)
            .with_context(|| format!("input set {}", i + 1))?;
        let entry = compiler
            .compile(function, &examples)
            .with_context(|| format!("cannot compile input set {}", i + 1))?;
        let shapes: Vec<String> = m
            .inputs()
            .iter()
            .zip(&examples)
            .map(|(info, ex)| format!("{}: {}", info.name, ex.meta))
            .collect();
        let kernels = compiler
            .manifest()
            .function(function)
            .and_then(|f| f.entries.get(entry))
            .map_or(0, |e| e.kernels.len());
        println!("entry {entry}: {}  ({kernels} kernels)", shapes.join(", "));
        if bundle_samples {
            let inputs = sample_inputs(&examples, entry as u64)
                .with_context(|| format!("cannot make sample inputs for entry {entry}"))?;
            compiler
                .bundle_samples(
                    function,
                    entry,
                    &inputs,
                    &ampoule::compiler::package::SampleOptions::default(),
                )
                .with_context(|| format!("cannot bundle samples for entry {entry}"))?;
            let tolerances = compiler
                .manifest()
                .function(function)
                .and_then(|f| f.entries.get(entry))
                .and_then(|e| e.samples.as_ref())
                .map(|s| {
                    s.tolerances
                        .iter()
                        .map(|(n, t)| format!("{n} rtol {:.1e} atol {:.1e}", t.rtol, t.atol))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            println!("  samples bundled (reference kernels): {tolerances}");
        }
    }
    compiler
        .save(out)
        .with_context(|| format!("cannot save the package to `{}`", out.display()))?;
    println!(
        "compiled `{}` ({} nodes, opsets {}) into {} as function `{function}` in {:.1} ms",
        model.display(),
        m.node_count(),
        m.opsets()
            .iter()
            .map(|(d, v)| format!("{}={v}", if d.is_empty() { "ai.onnx" } else { d }))
            .collect::<Vec<_>>()
            .join(","),
        out.display(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// SplitMix64: a small, well-mixed, seedable generator, so sample inputs
/// need no dependency and are the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Seeded random inputs of the examples' shapes (see the module doc).
fn sample_inputs(
    examples: &[ampoule::compiler::Example],
    seed: u64,
) -> Result<Vec<ampoule::kernels::Tensor>> {
    use ampoule::host::ScalarValue;
    use ampoule::kernels::{DType, Tensor};
    let mut rng = SplitMix(seed.wrapping_mul(0xA076_1D64_78BD_642F) ^ 0x5A4D_504C_4553);
    examples
        .iter()
        .map(|ex| {
            let dtype = ex.meta.dtype;
            let n = ex
                .meta
                .numel()
                .context("the example's element count overflows")?;
            let mut bytes = Vec::with_capacity(n.saturating_mul(dtype.size()));
            for _ in 0..n {
                // A specialized scalar must have its value, or no entry serves it.
                let (f, i) = match ex.value {
                    Some(ScalarValue::Int(v)) => (v as f64, v),
                    Some(ScalarValue::Float(v)) => (v, v as i64),
                    None => {
                        let i = (rng.next() % 4) as i64;
                        (rng.normal(), i)
                    }
                };
                match dtype {
                    DType::F32 => bytes.extend_from_slice(&(f as f32).to_le_bytes()),
                    DType::F64 => bytes.extend_from_slice(&f.to_le_bytes()),
                    DType::I8 => bytes.extend_from_slice(&(i as i8).to_le_bytes()),
                    DType::U8 => bytes.push(i as u8),
                    DType::Bool => bytes.push(u8::from(i % 2 == 1)),
                    DType::I16 => bytes.extend_from_slice(&(i as i16).to_le_bytes()),
                    DType::U16 => bytes.extend_from_slice(&(i as u16).to_le_bytes()),
                    DType::I32 => bytes.extend_from_slice(&(i as i32).to_le_bytes()),
                    DType::U32 => bytes.extend_from_slice(&(i as u32).to_le_bytes()),
                    DType::I64 => bytes.extend_from_slice(&i.to_le_bytes()),
                    DType::U64 => bytes.extend_from_slice(&(i as u64).to_le_bytes()),
                }
            }
            Ok(Tensor::from_bytes(dtype, &ex.meta.shape, &bytes)?)
        })
        .collect()
}

fn test(
    dir: &Path,
    function: Option<&str>,
    binds: &[String],
    reference: bool,
    trust: &TrustArgs,
) -> Result<()> {
    let host = host(reference, trust)?;
    let mut bindings = Bindings::new();
    for b in binds {
        let (name, file) = parse_pair(b)?;
        bindings.insert(name, read_tensor(file)?);
    }
    let pkg = host
        .open(dir, bindings)
        .with_context(|| format!("cannot open package `{}`", dir.display()))?;
    let m = pkg.manifest();
    let functions: Vec<&ampoule::host::manifest::FunctionDecl> = match function {
        Some(name) => vec![m.function(name).with_context(|| {
            format!(
                "package has no function `{name}`; it has: {}",
                m.functions
                    .iter()
                    .map(|f| format!("`{}`", f.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?],
        None => m.functions.iter().collect(),
    };
    let (mut replayed, mut outputs) = (0usize, 0usize);
    let mut failed = Vec::new();
    for f in &functions {
        for ei in 0..f.entries.len() {
            match pkg.replay_samples(&f.name, ei) {
                Ok(None) => println!("{} entry {ei}: no samples", f.name),
                Ok(Some(reports)) => {
                    replayed += 1;
                    for r in reports {
                        outputs += 1;
                        println!("{r}");
                        if !r.comparison.passed() {
                            failed.push(format!("{} entry {ei} output `{}`", f.name, r.output));
                        }
                    }
                }
                Err(e) => {
                    replayed += 1;
                    println!("{} entry {ei}: the replay failed: {e}  FAIL", f.name);
                    failed.push(format!("{} entry {ei} (the replay failed)", f.name));
                }
            }
        }
    }
    if replayed == 0 {
        bail!(
            "package `{}` has no bundled samples{}; compile it with `ampoule compile MODEL.onnx -o PKG --bundle-samples` (or bundle them with `Compiler::bundle_samples`) to test it",
            dir.display(),
            function.map_or(String::new(), |f| format!(" for function `{f}`"))
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} of {outputs} sample output{} failed on {} kernels: {}",
            failed.len(),
            if outputs == 1 { "" } else { "s" },
            if reference { "reference" } else { "optimized" },
            failed.join(", ")
        );
    }
    println!(
        "ok: {outputs} output{} of {replayed} entr{} within tolerance on {} kernels",
        if outputs == 1 { "" } else { "s" },
        if replayed == 1 { "y" } else { "ies" },
        if reference { "reference" } else { "optimized" }
    );
    Ok(())
}

fn run(
    dir: &Path,
    function: Option<String>,
    inputs: &[String],
    binds: &[String],
    out_dir: &Path,
    reference: bool,
    trust: &TrustArgs,
) -> Result<()> {
    let host = host(reference, trust)?;
    let mut bindings = Bindings::new();
    for b in binds {
        let (name, file) = parse_pair(b)?;
        bindings.insert(name, read_tensor(file)?);
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
        named.push((name, read_tensor(file)?));
    }
    let sig = m.function(&function).map(|f| f.signature.clone());
    // Updated inputs are written back as `<input>.npy` beside the outputs.
    let updated: Vec<String> = sig
        .as_ref()
        .map(|s| s.mutated_names().iter().map(|n| n.to_string()).collect())
        .unwrap_or_default();
    if let Some(clash) = sig
        .as_ref()
        .and_then(|s| s.outputs.iter().find(|o| updated.contains(&o.name)))
    {
        bail!(
            "function `{function}` has an output named `{0}` and updates its input `{0}` in place; both would be written to {0}.npy, so `run` cannot write them apart",
            clash.name
        );
    }
    let t1 = Instant::now();
    let outputs = pkg.call_named_mut(&function, &mut named)?;
    let called = t1.elapsed();
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create `{}`", out_dir.display()))?;
    let sig = sig.context("function vanished")?;
    for (decl, t) in sig.outputs.iter().zip(&outputs) {
        let path = out_dir.join(format!("{}.npy", decl.name));
        ampoule::npy::write(&path, t)?;
        println!("{} {} -> {}", decl.name, t.meta(), path.display());
    }
    for name in &updated {
        if let Some((_, t)) = named.iter().find(|(n, _)| n == name) {
            let path = out_dir.join(format!("{name}.npy"));
            ampoule::npy::write(&path, t)?;
            println!("{name} (updated input) {} -> {}", t.meta(), path.display());
        }
    }
    eprintln!(
        "open {:.2} ms, call {:.2} ms",
        opened.as_secs_f64() * 1e3,
        called.as_secs_f64() * 1e3
    );
    Ok(())
}
