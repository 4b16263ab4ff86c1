//! Kernel benchmarks: `matmul@1` in FLOP/s against this machine's measured
//! f32 FMA peak, and `binary@1 (add)` on 1M f32 elements in bytes/s (it is
//! memory bound). Each launch goes through the registry, `check` and `run`,
//! as the host runs it, with the output buffer reused across iterations.
//!
//! Run: `cargo bench --bench kernels`. The peak is printed first; matmul
//! throughput is reported by criterion as "elem/s", where one element is one
//! FLOP (a product of n×n matrices counts 2·n³).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ampoule_kernels::{AttrValue, Attrs, Impl, Registry, Tensor, TensorMeta};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Independent vector accumulators: enough to cover FMA latency on two
/// ports, few enough to stay in registers with the two constants.
const ACCS: usize = 10;

/// Which instruction set a peak measurement uses.
#[derive(Clone, Copy, Debug)]
enum Isa {
    /// The compilation target's baseline (SSE2 on x86_64): no FMA, so the
    /// loop is a `mul` then an `add` on 8-lane arrays the compiler
    /// vectorizes.
    Baseline,
    /// 8-lane `vfmadd` (what `gemm` uses on this class of CPU).
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// 16-lane `vfmadd`.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// f32 lanes updated per accumulator per round.
    fn lanes(self) -> usize {
        match self {
            Isa::Baseline => 8,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => 8,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 16,
        }
    }
}

/// `iters` rounds of `acc = acc * a + b` on `ACCS` accumulators of 8 lanes.
fn baseline_loop(iters: u64, seed: f32) {
    let (a, b) = (black_box(0.999_99f32), black_box(1.0e-6f32));
    let mut acc = [[seed; 8]; ACCS];
    for _ in 0..iters {
        for lane in acc.iter_mut() {
            for x in lane.iter_mut() {
                *x = *x * a + b;
            }
        }
    }
    black_box(acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2_loop(iters: u64, seed: f32) {
    use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_set1_ps};
    let (a, b) = (
        _mm256_set1_ps(black_box(0.999_99)),
        _mm256_set1_ps(black_box(1.0e-6)),
    );
    let mut acc = [_mm256_set1_ps(seed); ACCS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    black_box(acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512_loop(iters: u64, seed: f32) {
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_set1_ps};
    let (a, b) = (
        _mm512_set1_ps(black_box(0.999_99)),
        _mm512_set1_ps(black_box(1.0e-6)),
    );
    let mut acc = [_mm512_set1_ps(seed); ACCS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    black_box(acc);
}

fn run_loop(isa: Isa, iters: u64, seed: f32) {
    match isa {
        Isa::Baseline => baseline_loop(iters, seed),
        // SAFETY: `available_isas` lists this ISA only after
        // `is_x86_feature_detected!` confirmed avx2 and fma on this CPU,
        // which is the only precondition of a `#[target_feature]` function.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { avx2_loop(iters, seed) },
        // SAFETY: as above, for avx512f.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512_loop(iters, seed) },
    }
}

fn available_isas() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut isas = vec![Isa::Baseline];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            isas.push(Isa::Avx2Fma);
        }
        if is_x86_feature_detected!("avx512f") {
            isas.push(Isa::Avx512);
        }
    }
    isas
}

/// GFLOP/s of `threads` threads running the FMA loop: the best of five
/// rounds (the machine may be shared, and cores take time to clock up).
fn measure_peak(isa: Isa, threads: usize) -> f64 {
    let iters = 40_000_000u64;
    let flops = 2.0 * (ACCS * isa.lanes()) as f64 * iters as f64 * threads as f64;
    (0..5)
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| s.spawn(move || run_loop(isa, iters, t as f32)))
                    .collect();
                for h in handles {
                    h.join().expect("peak thread");
                }
            });
            flops / start.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn print_peak() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("measured f32 peak ({ACCS} independent vector accumulators, acc = acc*a + b):");
    for isa in available_isas() {
        let one = measure_peak(isa, 1);
        let all = measure_peak(isa, threads);
        println!("  {isa:?}: {one:.1} GFLOP/s on 1 thread, {all:.1} GFLOP/s on {threads} threads");
    }
    println!("matmul throughput below is in FLOP/s: criterion's \"elem/s\" counts 2*n^3 FLOPs per product");
}

/// A bound kernel with its inputs and a reusable output.
struct Launch {
    kernel: std::sync::Arc<dyn ampoule_kernels::Bound>,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

impl Launch {
    fn new(id: &str, attrs: &Attrs, inputs: Vec<Tensor>) -> Launch {
        let kernel = Registry::standard().bind(id, attrs).expect("bind");
        let metas: Vec<&TensorMeta> = inputs.iter().map(Tensor::meta).collect();
        let outputs = kernel
            .check(&metas)
            .expect("check")
            .iter()
            .map(|m| Tensor::zeros(m.dtype, &m.shape).expect("output"))
            .collect();
        Launch {
            kernel,
            inputs,
            outputs,
        }
    }

    fn run(&mut self, imp: Impl) {
        let inputs: Vec<&Tensor> = self.inputs.iter().collect();
        self.kernel
            .run(imp, &inputs, &mut self.outputs)
            .expect("run");
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn square(n: usize, seed: u32) -> Tensor {
    Tensor::from_vec(&[n, n], values(n * n, seed)).expect("matrix")
}

fn bench_matmul(c: &mut Criterion) {
    print_peak();
    let mut g = c.benchmark_group("matmul/f32");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in [512usize, 1024] {
        let mut launch = Launch::new("matmul@1", &Attrs::new(), vec![square(n, 1), square(n, 2)]);
        g.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        g.bench_function(BenchmarkId::new(n.to_string(), "optimized"), |b| {
            b.iter(|| launch.run(Impl::Optimized))
        });
        if n == 512 {
            g.bench_function(BenchmarkId::new(n.to_string(), "reference"), |b| {
                b.iter(|| launch.run(Impl::Reference))
            });
        }
    }
    g.finish();
}

fn bench_add(c: &mut Criterion) {
    let n = 1 << 20;
    let attrs: Attrs = [("op".to_string(), AttrValue::Str("add".into()))]
        .into_iter()
        .collect();
    let a = Tensor::from_vec(&[n], values(n, 3)).expect("a");
    let b = Tensor::from_vec(&[n], values(n, 4)).expect("b");
    let mut launch = Launch::new("binary@1", &attrs, vec![a, b]);
    let mut g = c.benchmark_group("binary/add/f32/1M");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    // Two reads and one write of 4-byte elements.
    g.throughput(Throughput::Bytes(12 * n as u64));
    for (name, imp) in [
        ("optimized", Impl::Optimized),
        ("reference", Impl::Reference),
    ] {
        g.bench_function(name, |b| b.iter(|| launch.run(imp)));
    }
    g.finish();
}

criterion_group!(benches, bench_matmul, bench_add);
criterion_main!(benches);
