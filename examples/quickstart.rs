//! Quickstart: trace a Rust function, compile it, save the package, load it
//! back and call it.
//!
//! `cargo run --example quickstart [-- PKG_DIR]` (default
//! `target/quickstart.ampoule`, which `examples/embed.rs` then serves).

use ampoule::compiler::{function, Compiler};
use ampoule::host::{Bindings, Host, HostConfig};
use ampoule::kernels::Tensor;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/quickstart.ampoule".into());

    // A tiny classifier: softmax((x @ w + b) / temperature). `w` and `b` are
    // captured from the environment, so they are saved in the package;
    // `temperature` is bound by whoever loads the package.
    let w = Tensor::from_vec(&[4, 3], (0..12).map(|i| (i as f32 - 5.5) / 4.0).collect())?;
    let b = Tensor::from_vec(&[3], vec![0.1f32, 0.0, -0.1])?;
    let classify = function("classify", move |cx, x| {
        let w = cx.capture("w", &w)?;
        let b = cx.capture("b", &b)?;
        let t = cx.bound("temperature")?;
        let logits = cx.linear(x[0], w, Some(b))?;
        let logits = cx.div(logits, t)?;
        Ok(vec![cx.softmax(logits, -1)?])
    })
    .inputs(["features"])
    .outputs(["probs"]);

    let host = Host::new(HostConfig::default())?;
    let temperature = Tensor::from_vec(&[1], vec![2.0f32])?;
    let mut compiler = Compiler::builder(host.clone())
        .bind("temperature", temperature.clone())
        .function(classify)
        .create()?;

    // Two batch sizes: two entries. Calling again reuses them.
    let one = Tensor::from_vec(&[1, 4], vec![1.0f32, 0.5, -0.5, 2.0])?;
    let three = Tensor::from_vec(&[3, 4], (0..12).map(|i| (i as f32).cos()).collect())?;
    for x in [&one, &three, &one] {
        let p = compiler.call("classify", std::slice::from_ref(x))?;
        println!(
            "classify{:?} -> probs {:?}",
            x.shape(),
            p[0].to_vec::<f32>()?
        );
    }
    println!("compiled {} entries", compiler.compile_count());
    compiler.save(&dir)?;
    println!("saved {dir}");

    // Load it back with the host alone and call it.
    let pkg = host.open(&dir, Bindings::new().bind("temperature", temperature))?;
    let p = pkg.call("classify", &[one])?;
    println!(
        "reloaded {} ({} entries): probs {:?}",
        pkg.digest(),
        pkg.manifest().functions[0].entries.len(),
        p[0].to_vec::<f32>()?
    );
    Ok(())
}
