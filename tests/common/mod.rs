//! Helpers shared by the end-to-end tests: hand-assembled packages (for
//! wrappers the compiler would never emit), hosts with short deadlines, and
//! file tampering.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ampoule::guest::{Program, Reg, Step};
use ampoule::host::guard::Guard;
use ampoule::host::manifest::{
    sha256_hex, wrapper_file, Abi, ArgDecl, ArgKind, EntryDecl, FunctionDecl, KernelUse, Manifest,
    Signature, FORMAT_VERSION, MANIFEST_DIGEST_FILE, MANIFEST_FILE,
};
use ampoule::host::{Host, HostConfig, Limits};
use ampoule::kernels::{AttrValue, Attrs, DType};

/// A host for tests: a short deadline, a small tensor budget, no artifact
/// cache (so "no Wasm was compiled" is observable).
pub fn test_host() -> Host {
    Host::new(test_config()).expect("host")
}

/// The configuration of [`test_host`], for tests that change one part.
pub fn test_config() -> HostConfig {
    HostConfig {
        limits: Limits {
            deadline: Duration::from_millis(300),
            host_tensor_bytes: 256 << 20,
            ..Limits::default()
        },
        cache_dir: None,
        ..HostConfig::default()
    }
}

/// The kernel table the hostile corpus assumes: kernel 0 is `binary@1 add`.
pub fn add_kernel() -> KernelUse {
    let mut attrs = Attrs::new();
    attrs.insert("op".into(), AttrValue::Str("add".into()));
    KernelUse {
        kernel: "binary@1".into(),
        attrs,
    }
}

/// A wrapper that adds its two f32[n] inputs into a planned buffer.
pub fn add_wrapper() -> Vec<u8> {
    let p = Program {
        globals: 0,
        buffers: 1,
        inputs: 2,
        registers: 3,
        init: vec![],
        run: vec![Step::Launch {
            kernel: 0,
            args: vec![Reg(1), Reg(2), Reg(0)],
        }],
        outputs: vec![Reg(0)],
    };
    ampoule::guest::emit(&p).expect("emit")
}

/// One function of a hand-assembled package.
pub struct HandFunction {
    pub name: String,
    pub inputs: Vec<(String, DType, u32)>,
    pub outputs: Vec<(String, DType, u32)>,
    pub guards: Vec<Guard>,
    pub wrapper: Vec<u8>,
    pub kernels: Vec<KernelUse>,
    pub buffers: Vec<(DType, Vec<u64>)>,
}

impl HandFunction {
    /// `name(a: f32[n], b: f32[n]) -> f32[n]` computing `a + b` for size `n`.
    pub fn add(name: &str, n: u64) -> Self {
        HandFunction {
            name: name.into(),
            inputs: vec![("a".into(), DType::F32, 1), ("b".into(), DType::F32, 1)],
            outputs: vec![("y".into(), DType::F32, 1)],
            guards: vec![
                Guard::InputCount { count: 2 },
                Guard::Dtype {
                    input: 0,
                    dtype: DType::F32,
                },
                Guard::Rank { input: 0, rank: 1 },
                Guard::Dim {
                    input: 0,
                    axis: 0,
                    size: n,
                },
                Guard::Dtype {
                    input: 1,
                    dtype: DType::F32,
                },
                Guard::Rank { input: 1, rank: 1 },
                Guard::Dim {
                    input: 1,
                    axis: 0,
                    size: n,
                },
            ],
            wrapper: add_wrapper(),
            kernels: vec![add_kernel()],
            buffers: vec![(DType::F32, vec![n])],
        }
    }

    /// A function with no inputs running `wrapper` against the add kernel.
    pub fn raw(name: &str, wrapper: Vec<u8>) -> Self {
        HandFunction {
            name: name.into(),
            inputs: vec![],
            outputs: vec![("y".into(), DType::F32, 1)],
            guards: vec![Guard::InputCount { count: 0 }],
            wrapper,
            kernels: vec![add_kernel()],
            buffers: vec![],
        }
    }
}

/// The manifest and files of a hand-assembled package (no globals).
pub fn hand_manifest(functions: &[HandFunction]) -> (Manifest, Vec<(String, Vec<u8>)>) {
    let mut files = Vec::new();
    let mut m = Manifest {
        format: FORMAT_VERSION,
        abi: Abi {
            wit: "ampoule:runtime@0.1.0".into(),
            kernels: vec!["binary@1".into()],
        },
        files: Default::default(),
        globals: vec![],
        functions: vec![],
    };
    let args = |v: &[(String, DType, u32)]| {
        v.iter()
            .map(|(n, d, r)| ArgDecl {
                name: n.clone(),
                kind: ArgKind::Tensor {
                    dtype: *d,
                    rank: *r,
                },
            })
            .collect()
    };
    for f in functions {
        let digest = sha256_hex(&f.wrapper);
        let name = wrapper_file(&digest);
        if !m.files.contains_key(&name) {
            m.files.insert(name.clone(), digest.clone());
            files.push((name, f.wrapper.clone()));
        }
        m.functions.push(FunctionDecl {
            name: f.name.clone(),
            signature: Signature {
                inputs: args(&f.inputs),
                outputs: args(&f.outputs),
                mutates: vec![],
            },
            program_hash: "0".repeat(64),
            entries: vec![EntryDecl {
                paths: vec![],
                symbols: vec![],
                samples: None,
                guards: f.guards.clone(),
                wrapper: digest,
                kernels: f.kernels.clone(),
                globals: vec![],
                buffers: f
                    .buffers
                    .iter()
                    .map(|(d, s)| ampoule::host::manifest::BufferDecl {
                        dtype: *d,
                        shape: s.clone(),
                    })
                    .collect(),
            }],
        });
    }
    (m, files)
}

/// Writes a package directory exactly as given (no verification).
pub fn write_package(dir: &Path, manifest: &Manifest, files: &[(String, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let json = manifest.to_json();
    std::fs::write(dir.join(MANIFEST_FILE), &json).unwrap();
    std::fs::write(dir.join(MANIFEST_DIGEST_FILE), sha256_hex(&json)).unwrap();
}

/// Writes a hand-assembled package and returns its directory.
pub fn hand_package(root: &Path, functions: &[HandFunction]) -> PathBuf {
    let dir = root.join("hand.ampoule");
    let (m, files) = hand_manifest(functions);
    write_package(&dir, &m, &files);
    dir
}

/// Flips one bit of byte `at` (or the middle byte) of `path`.
pub fn flip_byte(path: &Path, at: Option<usize>) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at.unwrap_or(bytes.len() / 2);
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// An f32 tensor.
pub fn f32s(shape: &[usize], v: Vec<f32>) -> ampoule::kernels::Tensor {
    ampoule::kernels::Tensor::from_vec(shape, v).unwrap()
}
