//! An application that embeds only `ampoule-host`: it opens a package with
//! explicit limits and a trust decision, binds a global by name, serves calls
//! from several threads, and handles each typed error.
//!
//! `cargo run --example quickstart && cargo run --example embed [-- PKG_DIR [PINNED_SHA256]]`

use std::time::Duration;

use ampoule_host::error::TrapKind;
use ampoule_host::{Bindings, Error, Host, HostConfig, Impl, Limits, Package, Tensor};

fn open(dir: &str, pinned: Option<&str>) -> Result<Package, String> {
    // Limits for a package we did not write: short deadline, small guest
    // memory, a host tensor budget sized for this model.
    let limits = Limits {
        deadline: Duration::from_millis(200),
        guest_memory_bytes: 1 << 20,
        host_tensor_bytes: 16 << 20,
        max_package_bytes: 64 << 20,
        ..Limits::default()
    };
    let host = Host::new(HostConfig {
        limits,
        kernels: Impl::Optimized,
        ..HostConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let bindings = Bindings::new().bind(
        "temperature",
        Tensor::from_vec(&[1], vec![0.5f32]).map_err(|e| e.to_string())?,
    );
    let pkg = match host.open(dir, bindings) {
        Ok(p) => p,
        Err(Error::Integrity { file, .. }) => {
            return Err(format!(
                "refusing `{dir}`: `{file}` was corrupted or tampered with"
            ))
        }
        Err(Error::Verify(problems)) => {
            return Err(format!(
                "refusing `{dir}`: {} verification problem(s), first: {}",
                problems.len(),
                problems[0]
            ))
        }
        Err(Error::FormatTooNew { found, .. }) => {
            return Err(format!("`{dir}` needs a newer ampoule (format {found})"))
        }
        Err(Error::MissingBinding { name }) => {
            return Err(format!(
                "this application does not provide global `{name}` that `{dir}` needs"
            ))
        }
        Err(e) => return Err(format!("cannot open `{dir}`: {e}")),
    };
    // The trust decision: if the operator pinned a package digest, anything
    // else is refused, however valid.
    if let Some(pin) = pinned {
        if pkg.digest() != pin {
            return Err(format!(
                "refusing `{dir}`: its digest {} is not the pinned {pin}",
                pkg.digest()
            ));
        }
    }
    println!(
        "serving {dir} (sha256 {}, verified, {} function(s))",
        pkg.digest(),
        pkg.manifest().functions.len()
    );
    Ok(pkg)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "target/quickstart.ampoule".into());
    let pinned = args.next();
    let pkg = match open(&dir, pinned.as_deref()) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };

    // Serve from four threads at once; each call gets an instance of its own.
    let served: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let pkg = &pkg;
                s.spawn(move || {
                    let mut ok = 0;
                    for i in 0..250 {
                        let v = (t * 1000 + i) as f32 / 1000.0;
                        let x =
                            Tensor::from_vec(&[1, 4], vec![v, -v, 0.5 * v, 1.0]).expect("shape");
                        match pkg.call("classify", &[x]) {
                            Ok(p) => {
                                let s: f32 = p[0].data::<f32>().expect("f32").iter().sum();
                                assert!((s - 1.0).abs() < 1e-5, "probabilities sum to {s}");
                                ok += 1;
                            }
                            Err(e) => eprintln!("thread {t}: {e}"),
                        }
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    println!("served {served} calls from 4 threads");

    // A request the package has no entry for: a typed miss that says why.
    let odd = Tensor::from_vec(&[2, 5], vec![0.0f32; 10]).expect("shape");
    match pkg.call("classify", &[odd]) {
        Err(Error::GuardMiss {
            function,
            explanations,
        }) => {
            println!("no compiled variant of `{function}` for that input:");
            for e in explanations {
                println!("  {e}");
            }
        }
        Err(Error::Trap {
            kind: TrapKind::Deadline,
            ..
        }) => println!("the package ran too long; the instance was discarded"),
        Err(Error::Trap { kind, message, .. }) => {
            println!("the package misbehaved ({kind:?}: {message}); the instance was discarded")
        }
        Err(Error::UnknownFunction { name, available }) => {
            println!("no function `{name}`; try {available}")
        }
        Err(e) => println!("error: {e}"),
        Ok(_) => println!("unexpectedly served"),
    }
}
