//! The sandbox: wasmtime with the component model, the wrapper contract from
//! `wit/`, slot handles, launch checks and limits.
//!
//! Invariants:
//! - A guest names tensors only through slot handles, checked on every use
//!   (index in range, generation current, instance tag ours). It can reach
//!   no tensor it was not given or did not create.
//! - Every launch is checked against its bound kernel's signature before the
//!   native kernel runs: operand count, input dtypes and shapes, exact output
//!   metas, no output aliasing an input or another output, no write to a
//!   read-only slot, no read of an unwritten one.
//! - Every refusal traps the instance with a recorded [`TrapKind`]; an
//!   instance that trapped is never used again.
//! - Every call runs under an epoch deadline; guest memory growth and host
//!   tensor bytes are bounded per instance.
//!
//! Thread safety: [`Host`] is `Send + Sync` and cheap to clone. An
//! [`Instance`] is `Send` but used by one call at a time (the package's pool
//! hands each call its own).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smallvec::SmallVec;

use ampoule_kernels::{Bound, DType, Impl, Registry, Tensor, TensorMeta, MAX_OPERANDS, MAX_RANK};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store};

use crate::cache::ArtifactCache;
use crate::error::{Error, TrapKind};
use crate::trust::TrustPolicy;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wrapper",
        imports: { default: trappable },
    });
}

use bindings::ampoule::runtime::host as wit_host;
pub(crate) use bindings::{Wrapper, WrapperPre};

/// The WIT package this host implements.
pub const WIT_PACKAGE: &str = "ampoule:runtime@0.1.0";
/// The only interface a wrapper may import.
pub const HOST_INTERFACE: &str = "ampoule:runtime/host@0.1.0";

/// Limits applied to every package this host opens. The defaults are meant
/// for untrusted packages.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock budget of one call (instantiation, `init` and `run` each).
    pub deadline: Duration,
    /// Largest linear memory a wrapper may have.
    pub guest_memory_bytes: usize,
    /// Host tensor bytes one instance may hold: planned buffers plus `alloc`s.
    pub host_tensor_bytes: usize,
    /// Largest total size of a package's files.
    pub max_package_bytes: u64,
    /// Largest number of slots one instance may hold at once.
    pub max_slots: u32,
    /// Idle instances kept per entry for reuse.
    pub pool_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_secs(10),
            guest_memory_bytes: 16 << 20,
            host_tensor_bytes: 4 << 30,
            max_package_bytes: 16 << 30,
            max_slots: MAX_SLOTS,
            pool_size: 16,
        }
    }
}

/// How a host is set up.
#[derive(Clone)]
pub struct HostConfig {
    pub limits: Limits,
    /// Which kernel implementations launches run.
    pub kernels: Impl,
    /// The kernels this host provides.
    pub registry: Registry,
    /// Where compiled wrappers are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Which signers' packages this host accepts; permissive by default
    /// (see [`crate::trust`]).
    pub trust: TrustPolicy,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            limits: Limits::default(),
            kernels: Impl::Optimized,
            registry: Registry::standard(),
            cache_dir: ArtifactCache::default_dir(),
            trust: TrustPolicy::default(),
        }
    }
}

/// Counters, for tests and `inspect`.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub wasm_compiles: AtomicU64,
    pub cache_hits: AtomicU64,
    pub instantiations: AtomicU64,
    pub calls: AtomicU64,
    pub pool_calls: AtomicU64,
    pub traps: AtomicU64,
}

pub(crate) struct HostInner {
    pub engine: Engine,
    pub linker: Linker<InstanceState>,
    pub config: HostConfig,
    pub cache: Option<ArtifactCache>,
    /// Wrappers compiled by this host, by digest: reopening a package (as
    /// compile-on-miss does) never recompiles what this host already has.
    pub compiled: Mutex<HashMap<String, Component>>,
    pub counters: Counters,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Compiled wrappers a host keeps in memory.
const MAX_COMPILED_IN_MEMORY: usize = 256;

/// One epoch tick; deadlines are counted in ticks.
const TICK: Duration = Duration::from_millis(2);

/// A host: the engine, the kernels and the limits. Open packages with
/// [`Host::open`](crate::package) and friends.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<HostInner>,
}

impl Host {
    /// Sets up the engine (pooling allocator, epoch interruption, memory
    /// limits) and links the contract.
    pub fn new(config: HostConfig) -> Result<Host, Error> {
        let limits = &config.limits;
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        let guest_mem = limits.guest_memory_bytes.max(64 << 10);
        pool.max_memory_size(guest_mem)
            .total_memories(256)
            .total_tables(256)
            .total_core_instances(512)
            .total_component_instances(256)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(1024)
            .max_core_instance_size(1 << 20)
            .max_component_instance_size(1 << 20);
        let mut wcfg = Config::new();
        wcfg.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 << 10)
            .memory_reservation(guest_mem as u64)
            .memory_reservation_for_growth(0)
            .memory_guard_size(64 << 10)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wcfg)
            .map_err(|e| Error::Sandbox(format!("cannot create engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        wit_host::add_to_linker::<InstanceState, HasSelf<InstanceState>>(&mut linker, |s| s)
            .map_err(|e| Error::Sandbox(format!("cannot link the contract: {e:#}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("ampoule-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::Sandbox(format!("cannot start the epoch thread: {e}")))?;
        }
        let cache = config
            .cache_dir
            .as_ref()
            .map(|dir| ArtifactCache::new(dir.clone(), &engine));
        Ok(Host {
            inner: Arc::new(HostInner {
                engine,
                linker,
                config,
                cache,
                compiled: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                ticker_stop,
            }),
        })
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Compiles (or fetches from the local artifact cache) a verified
    /// wrapper and pre-links it.
    pub(crate) fn prepare(
        &self,
        digest: &str,
        bytes: &[u8],
    ) -> Result<WrapperPre<InstanceState>, Error> {
        let inner = &self.inner;
        let _span =
            tracing::debug_span!("sandbox.prepare", wrapper = %crate::guard::prefix(digest, 12))
                .entered();
        let known = inner
            .compiled
            .lock()
            .ok()
            .and_then(|m| m.get(digest).cloned());
        let component = match known {
            Some(c) => c,
            None => {
                let c = match inner.cache.as_ref().and_then(|c| c.load(digest)) {
                    Some(c) => {
                        inner.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                        c
                    }
                    None => {
                        inner.counters.wasm_compiles.fetch_add(1, Ordering::Relaxed);
                        let c =
                            Component::new(&inner.engine, bytes).map_err(|e| Error::Compile {
                                wrapper: digest.to_string(),
                                message: format!("{e:#}"),
                            })?;
                        if let Some(cache) = &inner.cache {
                            cache.store(digest, &c);
                        }
                        c
                    }
                };
                if let Ok(mut m) = inner.compiled.lock() {
                    // Bounded: a long-lived host serving many packages keeps
                    // the most recent wrappers, not all of them.
                    if m.len() >= MAX_COMPILED_IN_MEMORY {
                        m.clear();
                    }
                    m.insert(digest.to_string(), c.clone());
                }
                c
            }
        };
        let pre = inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| Error::Compile {
                wrapper: digest.to_string(),
                message: format!("{e:#}"),
            })?;
        WrapperPre::new(pre).map_err(|e| Error::Compile {
            wrapper: digest.to_string(),
            message: format!("wrapper does not export the contract's `init` and `run`: {e:#}"),
        })
    }

    pub(crate) fn deadline_ticks(&self) -> u64 {
        (self.inner.config.limits.deadline.as_micros() / TICK.as_micros()).max(1) as u64 + 1
    }
}

// ---------------------------------------------------------------------------
// Slots and handles.

/// Slots per instance; bounded by the 12-bit index field of a handle.
pub const MAX_SLOTS: u32 = 1 << 12;
const INDEX_BITS: u32 = 12;
const GEN_BITS: u32 = 12;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;
/// The "no operand" marker in `launch`.
pub const NO_SLOT: u32 = u32::MAX;

static NEXT_TAG: AtomicU32 = AtomicU32::new(1);

fn next_tag() -> u8 {
    loop {
        let t = (NEXT_TAG.fetch_add(1, Ordering::Relaxed) & 0xff) as u8;
        // 0 is never issued and 0xff would make NO_SLOT a valid handle.
        if t != 0 && t != 0xff {
            return t;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Global,
    Buffer,
    Input,
    Alloc,
}

#[derive(Debug)]
enum SlotData {
    Free,
    Tensor(Tensor),
    /// A reshape of the tensor in slot `base`, valid while `base` has
    /// generation `base_gen`.
    View {
        base: u32,
        base_gen: u32,
        meta: TensorMeta,
    },
}

#[derive(Debug)]
struct Slot {
    data: SlotData,
    generation: u32,
    origin: Origin,
    readonly: bool,
    /// Whether a launch wrote this tensor (meaningless for views: the base's
    /// flag counts).
    written: bool,
    /// Created while `run` ran: freed when it returns.
    per_run: bool,
    /// Written during `init`: stays written across runs.
    init_written: bool,
}

/// Why the host refused a request; becomes a trap.
#[derive(Debug)]
pub(crate) struct Fault {
    pub kind: TrapKind,
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}
impl std::error::Error for Fault {}

/// A memoized launch check: input metas a kernel-table row was launched
/// with and the output metas they gave. A row serves every launch of its
/// (kernel, attributes), often at several shapes, so each row remembers up to
/// [`MEMO_SIGNATURES`] signatures, the most recent first. Static entries hit
/// this on every launch after their first run.
struct CheckMemo {
    inputs: Vec<TensorMeta>,
    outputs: Vec<TensorMeta>,
}

/// Signatures remembered per kernel-table row.
const MEMO_SIGNATURES: usize = 8;

/// Everything an instance's store holds.
pub struct InstanceState {
    slots: Vec<Slot>,
    free: Vec<u32>,
    tag: u8,
    kernels: Arc<[Arc<dyn Bound>]>,
    memo: Vec<Vec<CheckMemo>>,
    imp: Impl,
    budget: usize,
    used: usize,
    max_slots: u32,
    /// Slots retired because their generation wrapped (see `free_slot`).
    retired: u32,
    guest_memory: usize,
    in_run: bool,
    in_init: bool,
    pub(crate) fault: Option<Fault>,
    /// Storage of freed `alloc` slots, kept for the next `alloc` of the same
    /// dtype and size (a dynamic entry allocates per run; its outputs come
    /// back here once the caller drops them). Never readable by the guest:
    /// an allocated slot is unwritten until a launch writes it whole, and
    /// reads of unwritten slots trap.
    spare: Vec<Tensor>,
}

/// At most this many spare storages per instance, of at most this many bytes
/// in all.
const MAX_SPARE: usize = 16;
const MAX_SPARE_BYTES: usize = 64 << 20;

/// Keeps `t`'s storage for reuse if it fits the spare limits. It may still
/// be shared with a caller (a run's output): a launch writes a slot's
/// storage in place only when the host owns it alone, and otherwise writes
/// fresh storage, so the caller's tensor never changes; once the caller
/// drops it, the storage is reused.
fn keep_spare(spare: &mut Vec<Tensor>, t: Tensor) {
    let held: usize = spare.iter().map(|s| s.bytes().len()).sum();
    if spare.len() < MAX_SPARE && held.saturating_add(t.bytes().len()) <= MAX_SPARE_BYTES {
        spare.push(t);
    }
}

/// A spare storage of `bytes` bytes and `meta`'s dtype, reshaped to `meta`.
fn take_spare(spare: &mut Vec<Tensor>, meta: &TensorMeta, bytes: usize) -> Option<Tensor> {
    let i = spare
        .iter()
        .position(|s| s.dtype() == meta.dtype && s.bytes().len() == bytes)?;
    let s = spare.swap_remove(i);
    s.reshaped(&meta.shape)
}

impl InstanceState {
    pub(crate) fn new(kernels: Arc<[Arc<dyn Bound>]>, imp: Impl, limits: &Limits) -> Self {
        let memo = (0..kernels.len()).map(|_| Vec::new()).collect();
        InstanceState {
            slots: Vec::new(),
            free: Vec::new(),
            tag: next_tag(),
            kernels,
            memo,
            imp,
            budget: limits.host_tensor_bytes,
            used: 0,
            max_slots: limits.max_slots.min(MAX_SLOTS),
            retired: 0,
            guest_memory: limits.guest_memory_bytes,
            in_run: false,
            in_init: false,
            fault: None,
            spare: Vec::new(),
        }
    }

    fn fail<T>(&mut self, kind: TrapKind, message: String) -> wasmtime::Result<T> {
        tracing::debug!(?kind, %message, "guest request refused");
        let fault = Fault { kind, message };
        let err = wasmtime::Error::msg(fault.to_string());
        self.fault = Some(fault);
        Err(err)
    }

    fn handle(&self, index: u32) -> u32 {
        (u32::from(self.tag) << (INDEX_BITS + GEN_BITS))
            | ((self.slots[index as usize].generation & GEN_MASK) << INDEX_BITS)
            | index
    }

    /// Resolves a handle to a live slot index, or says why not.
    fn resolve(&self, handle: u32) -> Result<u32, (TrapKind, String)> {
        let index = handle & ((1 << INDEX_BITS) - 1);
        let generation = (handle >> INDEX_BITS) & GEN_MASK;
        let tag = (handle >> (INDEX_BITS + GEN_BITS)) as u8;
        if tag != self.tag {
            return Err((
                TrapKind::BadHandle,
                format!("handle {handle:#010x} was not issued by this instance"),
            ));
        }
        let Some(slot) = self.slots.get(index as usize) else {
            return Err((
                TrapKind::BadHandle,
                format!("handle {handle:#010x} names slot {index}, which does not exist"),
            ));
        };
        if slot.generation & GEN_MASK != generation || matches!(slot.data, SlotData::Free) {
            return Err((
                TrapKind::StaleHandle,
                format!("handle {handle:#010x} names a slot that was freed"),
            ));
        }
        Ok(index)
    }

    /// The slot a view resolves to, checking the base is still alive.
    fn root(&self, index: u32) -> Result<u32, (TrapKind, String)> {
        match &self.slots[index as usize].data {
            SlotData::View { base, base_gen, .. } => {
                let b = &self.slots[*base as usize];
                if b.generation != *base_gen || matches!(b.data, SlotData::Free) {
                    Err((
                        TrapKind::StaleHandle,
                        format!("view in slot {index} outlived the tensor it views"),
                    ))
                } else {
                    Ok(*base)
                }
            }
            _ => Ok(index),
        }
    }

    fn meta_of(&self, index: u32) -> &TensorMeta {
        match &self.slots[index as usize].data {
            SlotData::Tensor(t) => t.meta(),
            SlotData::View { meta, .. } => meta,
            SlotData::Free => unreachable_meta(),
        }
    }

    fn insert(
        &mut self,
        data: SlotData,
        origin: Origin,
        readonly: bool,
        written: bool,
    ) -> Result<u32, (TrapKind, String)> {
        let per_run = self.in_run;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = self.slots.len() as u32;
                if i >= self.max_slots {
                    return Err((
                        TrapKind::BudgetExceeded,
                        format!(
                            "instance holds {i} slots, the limit ({} retired after {} reuses each)",
                            self.retired,
                            GEN_MASK + 1
                        ),
                    ));
                }
                self.slots.push(Slot {
                    data: SlotData::Free,
                    generation: 0,
                    origin,
                    readonly,
                    written,
                    per_run,
                    init_written: false,
                });
                i
            }
        };
        let s = &mut self.slots[index as usize];
        *s = Slot {
            data,
            generation: s.generation,
            origin,
            readonly,
            written,
            per_run,
            init_written: false,
        };
        Ok(self.handle(index))
    }

    fn free_slot(&mut self, index: u32) {
        let s = &mut self.slots[index as usize];
        if let SlotData::Tensor(t) = std::mem::replace(&mut s.data, SlotData::Free) {
            if s.origin == Origin::Alloc || s.origin == Origin::Buffer {
                self.used = self.used.saturating_sub(t.bytes().len());
            }
            if s.origin == Origin::Alloc {
                keep_spare(&mut self.spare, t);
            }
        }
        s.generation = s.generation.wrapping_add(1) & GEN_MASK;
        s.readonly = false;
        s.written = false;
        // A slot whose 12-bit generation wrapped would make the handles it
        // issued 4096 uses ago name a live tensor again (ABA): retire it.
        if s.generation == 0 {
            self.retired += 1;
        } else {
            self.free.push(index);
        }
    }

    /// Whether the instance retired so many slots that it should not be
    /// pooled again. A slot retires after 4096 uses, so a long-lived pooled
    /// instance is replaced long before retirement could exhaust its slots.
    pub(crate) fn worn_out(&self) -> bool {
        self.retired > self.max_slots / 2
    }

    fn charge(&mut self, bytes: usize) -> Result<(), (TrapKind, String)> {
        match self.used.checked_add(bytes) {
            Some(n) if n <= self.budget => {
                self.used = n;
                Ok(())
            }
            _ => Err((
                TrapKind::BudgetExceeded,
                format!(
                    "host tensor budget of {} bytes exceeded ({} in use, {} requested)",
                    self.budget, self.used, bytes
                ),
            )),
        }
    }

    /// Adds a global (read-only, written).
    pub(crate) fn add_global(&mut self, t: Tensor) -> Result<u32, Fault> {
        self.insert(SlotData::Tensor(t), Origin::Global, true, true)
            .map_err(fault)
    }

    /// Allocates a planned buffer (counts against the budget).
    pub(crate) fn add_buffer(&mut self, meta: &TensorMeta) -> Result<u32, Fault> {
        let bytes = meta.byte_len().ok_or_else(|| Fault {
            kind: TrapKind::BudgetExceeded,
            message: format!("buffer {meta} is too large"),
        })?;
        self.charge(bytes).map_err(fault)?;
        let t = Tensor::zeros(meta.dtype, &meta.shape).map_err(|e| Fault {
            kind: TrapKind::BudgetExceeded,
            message: e.to_string(),
        })?;
        self.insert(SlotData::Tensor(t), Origin::Buffer, false, false)
            .map_err(fault)
    }

    /// Binds an input for one run (read-only, written).
    pub(crate) fn add_input(&mut self, t: Tensor) -> Result<u32, Fault> {
        self.insert(SlotData::Tensor(t), Origin::Input, true, true)
            .map_err(fault)
    }

    pub(crate) fn begin_init(&mut self) {
        self.in_init = true;
    }

    pub(crate) fn end_init(&mut self) {
        self.in_init = false;
    }

    /// Marks the start of a run: buffers not written by `init` count as
    /// unwritten again.
    pub(crate) fn begin_run(&mut self) {
        self.in_run = true;
        for s in &mut self.slots {
            if s.origin == Origin::Buffer && !s.init_written {
                s.written = false;
            }
        }
    }

    /// Frees every slot created during the run.
    pub(crate) fn end_run(&mut self) {
        self.in_run = false;
        for i in 0..self.slots.len() as u32 {
            let s = &self.slots[i as usize];
            if s.per_run && !matches!(s.data, SlotData::Free) {
                self.free_slot(i);
            }
        }
    }

    /// Takes the tensor a returned handle names: a clone sharing storage
    /// (the next launch that writes the slot reallocates it if the caller
    /// still holds it).
    pub(crate) fn output(&self, handle: u32) -> Result<Tensor, Fault> {
        let index = self.resolve(handle).map_err(fault)?;
        let root = self.root(index).map_err(fault)?;
        if !self.slots[root as usize].written {
            return Err(Fault {
                kind: TrapKind::UninitializedRead,
                message: format!("output handle {handle:#010x} was never written"),
            });
        }
        let SlotData::Tensor(t) = &self.slots[root as usize].data else {
            return Err(Fault {
                kind: TrapKind::Contract,
                message: "output names a freed slot".into(),
            });
        };
        let meta = self.meta_of(index);
        t.reshaped(&meta.shape).ok_or_else(|| Fault {
            kind: TrapKind::Contract,
            message: "output view does not match its base".into(),
        })
    }

    /// Host tensor bytes in use.
    pub fn bytes_in_use(&self) -> usize {
        self.used
    }

    /// The tensor operand `i` (with root `root`) names, shaped as seen.
    fn operand(&self, i: u32, root: u32) -> Tensor {
        match (
            &self.slots[root as usize].data,
            &self.slots[i as usize].data,
        ) {
            (SlotData::Tensor(t), SlotData::View { meta, .. }) => {
                t.reshaped(&meta.shape).unwrap_or_else(|| t.clone())
            }
            (SlotData::Tensor(t), _) => t.clone(),
            // Unreachable: roots were resolved to live tensors above.
            _ => Tensor::scalar(0u8),
        }
    }

    fn dims(rank: u32, d: [u32; MAX_RANK]) -> Result<Vec<usize>, (TrapKind, String)> {
        if rank as usize > MAX_RANK {
            return Err((
                TrapKind::Contract,
                format!("rank {rank} exceeds the maximum of {MAX_RANK}"),
            ));
        }
        if d[rank as usize..].iter().any(|&x| x != 0) {
            return Err((TrapKind::Contract, "dims past the rank must be 0".into()));
        }
        Ok(d[..rank as usize].iter().map(|&x| x as usize).collect())
    }

    fn do_launch(
        &mut self,
        kernel: u32,
        args: [u32; MAX_OPERANDS],
    ) -> Result<(), (TrapKind, String)> {
        let Some(bound) = self.kernels.get(kernel as usize) else {
            return Err((
                TrapKind::LaunchRejected,
                format!(
                    "kernel {kernel} is not in this entry's table of {}",
                    self.kernels.len()
                ),
            ));
        };
        let arity = bound.arity();
        let n = arity.inputs + arity.outputs;
        if n > MAX_OPERANDS {
            return Err((
                TrapKind::LaunchRejected,
                format!("kernel {kernel} has {n} operands, more than {MAX_OPERANDS}"),
            ));
        }
        if let Some(i) = args[n..].iter().position(|&a| a != NO_SLOT) {
            return Err((
                TrapKind::LaunchRejected,
                format!(
                    "kernel {kernel} takes {n} operands but operand {} is set",
                    n + i
                ),
            ));
        }
        let mut idx = [0u32; MAX_OPERANDS];
        let mut roots = [0u32; MAX_OPERANDS];
        for (k, &h) in args[..n].iter().enumerate() {
            idx[k] = self.resolve(h)?;
            roots[k] = self.root(idx[k])?;
        }
        let (ins, outs) = (&idx[..arity.inputs], &idx[arity.inputs..n]);
        for (k, &o) in outs.iter().enumerate() {
            let s = &self.slots[o as usize];
            if s.readonly {
                return Err((
                    TrapKind::ReadOnly,
                    format!("kernel {kernel}: output {k} is read-only (an input or a global)"),
                ));
            }
            let r = roots[arity.inputs + k];
            if roots[..arity.inputs + k].contains(&r) {
                return Err((
                    TrapKind::LaunchRejected,
                    format!("kernel {kernel}: output {k} aliases another operand"),
                ));
            }
        }
        // Signature check, memoized per kernel-table row.
        let memo = &self.memo[kernel as usize];
        let hit = memo.iter().position(|m| {
            m.inputs.len() == ins.len()
                && ins
                    .iter()
                    .zip(&m.inputs)
                    .all(|(&i, m)| self.meta_of(i) == m)
        });
        let hit = match hit {
            Some(h) => h,
            None => {
                let metas: Vec<TensorMeta> = ins.iter().map(|&i| self.meta_of(i).clone()).collect();
                let refs: Vec<&TensorMeta> = metas.iter().collect();
                let expected = bound
                    .check(&refs)
                    .map_err(|e| (TrapKind::LaunchRejected, e.to_string()))?;
                if expected.len() != arity.outputs {
                    return Err((
                        TrapKind::LaunchRejected,
                        format!(
                            "kernel {kernel} derived {} outputs, arity says {}",
                            expected.len(),
                            arity.outputs
                        ),
                    ));
                }
                let memo = &mut self.memo[kernel as usize];
                memo.truncate(MEMO_SIGNATURES - 1);
                memo.insert(
                    0,
                    CheckMemo {
                        inputs: metas,
                        outputs: expected,
                    },
                );
                0
            }
        };
        for (k, &o) in outs.iter().enumerate() {
            let want = &self.memo[kernel as usize][hit].outputs[k];
            let got = self.meta_of(o);
            if got != want {
                return Err((
                    TrapKind::LaunchRejected,
                    format!("kernel {kernel}: output {k} is {got}, the kernel produces {want}"),
                ));
            }
        }

        // Checked last, in the contract's order: a mis-shaped launch is
        // reported as such even if its inputs are also unwritten.
        for (k, &r) in roots[..arity.inputs].iter().enumerate() {
            if !self.slots[r as usize].written {
                return Err((
                    TrapKind::UninitializedRead,
                    format!("kernel {kernel}: input {k} was never written"),
                ));
            }
        }
        // Outputs: taken out of their slots for the duration of the kernel
        // (views reshaped as the operand sees them, and back afterwards).
        // No output aliases an input, so each is uniquely owned here.
        let mut outputs: SmallVec<[Tensor; 2]> = SmallVec::new();
        let mut base_shapes: SmallVec<[Option<Vec<usize>>; 2]> = SmallVec::new();
        for (k, &o) in outs.iter().enumerate() {
            let root = roots[arity.inputs + k];
            let view_shape = match &self.slots[o as usize].data {
                SlotData::View { meta, .. } => Some(meta.shape.clone()),
                _ => None,
            };
            let SlotData::Tensor(t) =
                std::mem::replace(&mut self.slots[root as usize].data, SlotData::Free)
            else {
                return Err((TrapKind::Contract, "output root is not a tensor".into()));
            };
            let mut t = match &view_shape {
                Some(shape) => {
                    base_shapes.push(Some(t.shape().to_vec()));
                    t.reshaped(shape).unwrap_or(t)
                }
                None => {
                    base_shapes.push(None);
                    t
                }
            };
            if t.bytes_mut().is_err() {
                // The caller still holds last run's result: write fresh storage.
                t = Tensor::zeros(t.dtype(), t.shape())
                    .map_err(|e| (TrapKind::BudgetExceeded, e.to_string()))?;
            }
            outputs.push(t);
        }
        // Inputs: borrowed from their slots; only views need a reshaped
        // handle (a cheap clone sharing storage).
        let views: SmallVec<[Tensor; 2]> = ins
            .iter()
            .zip(&roots[..arity.inputs])
            .filter(|(i, r)| i != r)
            .map(|(&i, &r)| self.operand(i, r))
            .collect();
        let result = {
            let mut views = views.iter();
            let mut refs: SmallVec<[&Tensor; MAX_OPERANDS]> = SmallVec::new();
            for (&i, &r) in ins.iter().zip(&roots[..arity.inputs]) {
                let t = match (&self.slots[r as usize].data, i == r) {
                    (SlotData::Tensor(t), true) => Some(t),
                    (SlotData::Tensor(_), false) => views.next(),
                    _ => None,
                };
                match t {
                    Some(t) => refs.push(t),
                    None => return Err((TrapKind::Contract, "input root is not a tensor".into())),
                }
            }
            let _span = tracing::trace_span!("kernel.launch", kernel).entered();
            // Defense in depth: kernels never panic on checked operands, but
            // if one ever did, a guest must not be able to take the host
            // down with it. The instance traps and is discarded.
            let imp = self.imp;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                bound.run_prechecked(imp, &refs, &mut outputs)
            }))
            .unwrap_or_else(|_| {
                Err(ampoule_kernels::KernelError::Run {
                    kernel: format!("kernel {kernel}"),
                    message: "the kernel panicked (a host bug; please report it)".into(),
                })
            })
        };
        for ((k, t), base) in outputs.into_iter().enumerate().zip(base_shapes) {
            let root = roots[arity.inputs + k];
            let t = match base {
                Some(shape) => t.reshaped(&shape).unwrap_or(t),
                None => t,
            };
            self.slots[root as usize].data = SlotData::Tensor(t);
        }
        result.map_err(|e| (TrapKind::KernelFailed, e.to_string()))?;
        let in_init = self.in_init;
        for &r in &roots[arity.inputs..n] {
            let s = &mut self.slots[r as usize];
            s.written = true;
            s.init_written |= in_init;
        }
        Ok(())
    }
}

fn fault((kind, message): (TrapKind, String)) -> Fault {
    Fault { kind, message }
}

fn unreachable_meta() -> &'static TensorMeta {
    static FREE: std::sync::OnceLock<TensorMeta> = std::sync::OnceLock::new();
    FREE.get_or_init(|| TensorMeta::new(DType::U8, vec![0]))
}

impl wit_host::Host for InstanceState {
    fn launch(
        &mut self,
        kernel: u32,
        a0: u32,
        a1: u32,
        a2: u32,
        a3: u32,
        a4: u32,
        a5: u32,
    ) -> wasmtime::Result<()> {
        match self.do_launch(kernel, [a0, a1, a2, a3, a4, a5]) {
            Ok(()) => Ok(()),
            Err((kind, message)) => self.fail(kind, message),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn alloc(
        &mut self,
        dtype: u32,
        rank: u32,
        d0: u32,
        d1: u32,
        d2: u32,
        d3: u32,
        d4: u32,
        d5: u32,
        d6: u32,
        d7: u32,
    ) -> wasmtime::Result<u32> {
        let r = (|| {
            let dtype = DType::from_code(dtype)
                .ok_or((TrapKind::Contract, format!("unknown dtype code {dtype}")))?;
            let shape = Self::dims(rank, [d0, d1, d2, d3, d4, d5, d6, d7])?;
            let meta = TensorMeta::new(dtype, shape);
            let bytes = meta.byte_len().ok_or((
                TrapKind::BudgetExceeded,
                format!("alloc of {meta} overflows"),
            ))?;
            self.charge(bytes)?;
            let spare = take_spare(&mut self.spare, &meta, bytes);
            let t = match spare.map_or_else(|| Tensor::zeros(dtype, &meta.shape), Ok) {
                Ok(t) => t,
                Err(e) => {
                    self.used -= bytes;
                    return Err((TrapKind::BudgetExceeded, e.to_string()));
                }
            };
            self.insert(SlotData::Tensor(t), Origin::Alloc, false, false)
                .inspect_err(|_| self.used -= bytes)
        })();
        r.or_else(|(k, m)| self.fail(k, m))
    }

    #[allow(clippy::too_many_arguments)]
    fn view(
        &mut self,
        src: u32,
        rank: u32,
        d0: u32,
        d1: u32,
        d2: u32,
        d3: u32,
        d4: u32,
        d5: u32,
        d6: u32,
        d7: u32,
    ) -> wasmtime::Result<u32> {
        let r = (|| {
            let index = self.resolve(src)?;
            let base = self.root(index)?;
            let shape = Self::dims(rank, [d0, d1, d2, d3, d4, d5, d6, d7])?;
            let from = self.meta_of(index).clone();
            let meta = TensorMeta::new(from.dtype, shape);
            if meta.numel() != from.numel() {
                return Err((
                    TrapKind::Contract,
                    format!("cannot view {from} as {meta}: element counts differ"),
                ));
            }
            let (readonly, base_gen, origin) = {
                let s = &self.slots[base as usize];
                (s.readonly, s.generation, s.origin)
            };
            // A view's own `written` flag is unused: its base's counts.
            self.insert(
                SlotData::View {
                    base,
                    base_gen,
                    meta,
                },
                origin,
                readonly,
                false,
            )
        })();
        r.or_else(|(k, m)| self.fail(k, m))
    }

    fn release(&mut self, slot: u32) -> wasmtime::Result<()> {
        match self.resolve(slot) {
            Ok(i)
                if matches!(self.slots[i as usize].origin, Origin::Alloc)
                    || matches!(self.slots[i as usize].data, SlotData::View { .. }) =>
            {
                self.free_slot(i);
                Ok(())
            }
            Ok(_) => self.fail(
                TrapKind::Contract,
                format!(
                    "handle {slot:#010x} was not created by alloc or view and cannot be released"
                ),
            ),
            Err((k, m)) => self.fail(k, m),
        }
    }

    fn dim(&mut self, slot: u32, axis: u32) -> wasmtime::Result<u32> {
        match self.resolve(slot) {
            Ok(i) => {
                let shape = &self.meta_of(i).shape;
                match shape.get(axis as usize) {
                    Some(&d) => u32::try_from(d).or_else(|_| {
                        self.fail(TrapKind::Contract, format!("dim {d} does not fit in u32"))
                    }),
                    None => {
                        let rank = shape.len();
                        self.fail(
                            TrapKind::Contract,
                            format!("axis {axis} out of range for rank {rank}"),
                        )
                    }
                }
            }
            Err((k, m)) => self.fail(k, m),
        }
    }

    fn read_i64(&mut self, slot: u32, index: u32) -> wasmtime::Result<i64> {
        match self.read_scalar(slot, index) {
            Ok(crate::guard::ScalarValue::Int(v)) => Ok(v),
            Ok(crate::guard::ScalarValue::Float(_)) => {
                self.fail(TrapKind::Contract, "read-i64 of a float tensor".into())
            }
            Err((k, m)) => self.fail(k, m),
        }
    }

    fn read_f64(&mut self, slot: u32, index: u32) -> wasmtime::Result<f64> {
        match self.read_scalar(slot, index) {
            Ok(crate::guard::ScalarValue::Float(v)) => Ok(v),
            Ok(crate::guard::ScalarValue::Int(_)) => {
                self.fail(TrapKind::Contract, "read-f64 of an integer tensor".into())
            }
            Err((k, m)) => self.fail(k, m),
        }
    }
}

impl InstanceState {
    fn read_scalar(
        &self,
        slot: u32,
        index: u32,
    ) -> Result<crate::guard::ScalarValue, (TrapKind, String)> {
        let i = self.resolve(slot)?;
        let root = self.root(i)?;
        if !self.slots[root as usize].written {
            return Err((
                TrapKind::UninitializedRead,
                format!("read of handle {slot:#010x}, which nothing wrote"),
            ));
        }
        let SlotData::Tensor(t) = &self.slots[root as usize].data else {
            return Err((TrapKind::Contract, "read of a freed slot".into()));
        };
        let size = t.dtype().size();
        let start = (index as usize)
            .checked_mul(size)
            .filter(|&s| s + size <= t.bytes().len())
            .ok_or((
                TrapKind::Contract,
                format!(
                    "read of element {index} of a tensor with {} elements",
                    t.numel()
                ),
            ))?;
        let one = Tensor::from_bytes(t.dtype(), &[], &t.bytes()[start..start + size])
            .map_err(|e| (TrapKind::Contract, e.to_string()))?;
        crate::guard::ScalarValue::of(&one).ok_or((TrapKind::Contract, "unreadable scalar".into()))
    }
}

impl wasmtime::ResourceLimiter for InstanceState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.guest_memory {
            let limit = self.guest_memory;
            return self.fail(
                TrapKind::GuestMemoryLimit,
                format!("guest memory would grow to {desired} bytes, the limit is {limit}"),
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > 1024 {
            return self.fail(
                TrapKind::GuestMemoryLimit,
                format!("guest table would grow to {desired} elements, the limit is 1024"),
            );
        }
        Ok(true)
    }
}

/// A live wrapper instance with its store.
pub(crate) struct Instance {
    pub store: Store<InstanceState>,
    pub wrapper: Wrapper,
}

/// Maps a failed wasmtime call to a trap kind and message.
pub(crate) fn classify(
    store: &mut Store<InstanceState>,
    err: wasmtime::Error,
) -> (TrapKind, String) {
    if let Some(f) = store.data_mut().fault.take() {
        return (f.kind, f.message);
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            (TrapKind::Deadline, "the call ran past its deadline".into())
        }
        // `Trap`'s display already reads "wasm trap: ...".
        Some(t) => (TrapKind::Wasm, t.to_string()),
        None => (TrapKind::Wasm, format!("{err:#}")),
    }
}
