//! Compiling the same program with the same options gives byte-identical
//! packages, and a package saved, loaded and saved again is unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use ampoule_compiler::{function, Compiler, FunctionDef, PackageDraft};
use ampoule_host::{Host, HostConfig};
use ampoule_kernels::{DType, Tensor};

fn host() -> Host {
    Host::new(HostConfig {
        cache_dir: None,
        ..HostConfig::default()
    })
    .expect("host")
}

fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn defs() -> Vec<FunctionDef> {
    let w = Tensor::from_vec(&[3, 4], (0..12).map(|i| i as f32 * 0.25 - 1.0).collect()).unwrap();
    let b = Tensor::from_vec(&[4], vec![0.5f32, -0.5, 1.0, 0.0]).unwrap();
    let (w2, b2) = (w.clone(), b.clone());
    let ids = Tensor::from_vec(&[2], vec![2i64, 0]).unwrap();
    vec![
        function("encode", move |cx, x| {
            let w = cx.capture("w", &w)?;
            let b = cx.capture("b", &b)?;
            let h = cx.linear(x[0], w, Some(b))?;
            let h = cx.gelu(h)?;
            let two = cx.constant(Tensor::scalar(2.0f32));
            let h = cx.mul(h, two)?;
            Ok(vec![cx.softmax(h, -1)?])
        })
        .inputs(["x"])
        .outputs(["probs"]),
        function("pick", move |cx, x| {
            let w = cx.capture("w", &w2)?;
            let b = cx.capture("b", &b2)?;
            let ids = cx.constant(ids.clone());
            let rows = cx.gather(x[0], ids, 0)?;
            let h = cx.linear(rows, w, Some(b))?;
            let m = cx.mean(h, &[-1], true)?;
            Ok(vec![cx.sub(h, m)?, cx.cast(m, DType::F64)?])
        }),
    ]
}

fn build(dir: &Path) {
    let mut c = Compiler::builder(host())
        .function(defs()[0].clone())
        .function(defs()[1].clone())
        .create()
        .unwrap();
    for batch in [3usize, 4] {
        let x = Tensor::from_vec(
            &[batch, 3],
            (0..batch * 3).map(|i| i as f32 * 0.1).collect(),
        )
        .unwrap();
        c.call("encode", std::slice::from_ref(&x)).unwrap();
        c.call("pick", &[x]).unwrap();
    }
    assert_eq!(c.compile_count(), 4);
    c.save(dir).unwrap();
}

#[test]
fn two_compiles_give_byte_identical_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build(&a);
    build(&b);
    let (ta, tb) = (read_tree(&a), read_tree(&b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (name, bytes) in &ta {
        assert!(bytes == &tb[name], "`{name}` differs between two compiles");
    }
    let manifest = String::from_utf8(ta["manifest.json"].clone()).unwrap();
    assert!(
        !manifest.contains(tmp.path().to_str().unwrap()),
        "the manifest records no path"
    );
    // Both functions read the shared weights; the folded/embedded constants are globals too.
    let m = ampoule_host::Manifest::from_json(&ta["manifest.json"]).unwrap();
    let names: Vec<&str> = m.globals.iter().map(|g| g.name.as_str()).collect();
    assert!(names.contains(&"w") && names.contains(&"b"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "w").count(), 1);
}

#[test]
fn load_then_save_is_the_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build(&a);
    let (draft, package) = PackageDraft::load(&host(), &a, &BTreeMap::new()).unwrap();
    assert_eq!(package.manifest(), draft.manifest());
    draft.save(&b).unwrap();
    assert_eq!(read_tree(&a), read_tree(&b));
}
