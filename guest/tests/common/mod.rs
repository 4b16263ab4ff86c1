//! A mock host for running wrapper components in tests: it links every
//! import of `ampoule:runtime/host@0.1.0`, records each call in order, and
//! answers with predictable values:
//!
//! - `alloc` and `view` return fresh handles 1000, 1001, ...;
//! - `dim(slot, axis)` returns `slot * 10 + axis`;
//! - `read-i64(slot, _)` returns the value set in [`Mock::values`], else 0;
//! - `read-f64` returns 0.0;
//! - with [`Mock::alloc_budget`] set, `alloc` fails (traps the guest) once
//!   that many allocations were made.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::OnceLock;

use wasmtime::component::{Component, Instance, Linker};
use wasmtime::{bail, Result};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};

/// One recorded host call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Launch(u32, [u32; 6]),
    Alloc(u32, u32, [u32; 8]),
    View(u32, u32, [u32; 8]),
    Release(u32),
    Dim(u32, u32),
    ReadI64(u32, u32),
    ReadF64(u32, u32),
}

/// `0xffffffff`, the padding of unused launch operands.
pub const NONE: u32 = u32::MAX;

pub struct Mock {
    pub calls: Vec<Call>,
    pub next_handle: u32,
    pub values: HashMap<u32, i64>,
    pub alloc_budget: Option<usize>,
    pub allocs: usize,
    pub limits: StoreLimits,
}

impl Default for Mock {
    fn default() -> Self {
        Mock {
            calls: Vec::new(),
            next_handle: 1000,
            values: HashMap::new(),
            alloc_budget: None,
            allocs: 0,
            limits: StoreLimitsBuilder::new()
                .memory_size(64 << 20)
                .trap_on_grow_failure(true)
                .build(),
        }
    }
}

impl Mock {
    fn fresh(&mut self) -> u32 {
        let h = self.next_handle;
        self.next_handle += 1;
        h
    }
}

/// One engine for all tests, with epoch interruption for the deadline tests.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(256 << 10);
        Engine::new(&config).expect("engine")
    })
}

fn linker() -> Result<Linker<Mock>> {
    let mut linker = Linker::<Mock>::new(engine());
    let mut host = linker.instance("ampoule:runtime/host@0.1.0")?;
    host.func_wrap(
        "launch",
        |mut cx, (k, a0, a1, a2, a3, a4, a5): (u32, u32, u32, u32, u32, u32, u32)| {
            cx.data_mut()
                .calls
                .push(Call::Launch(k, [a0, a1, a2, a3, a4, a5]));
            Ok(())
        },
    )?;
    type Shape = (u32, u32, u32, u32, u32, u32, u32, u32, u32, u32);
    host.func_wrap(
        "alloc",
        |mut cx, (dtype, rank, d0, d1, d2, d3, d4, d5, d6, d7): Shape| {
            let m = cx.data_mut();
            m.calls
                .push(Call::Alloc(dtype, rank, [d0, d1, d2, d3, d4, d5, d6, d7]));
            m.allocs += 1;
            if m.alloc_budget.is_some_and(|b| m.allocs > b) {
                bail!("budget exceeded");
            }
            Ok((m.fresh(),))
        },
    )?;
    host.func_wrap(
        "view",
        |mut cx, (src, rank, d0, d1, d2, d3, d4, d5, d6, d7): Shape| {
            let m = cx.data_mut();
            m.calls
                .push(Call::View(src, rank, [d0, d1, d2, d3, d4, d5, d6, d7]));
            Ok((m.fresh(),))
        },
    )?;
    host.func_wrap("release", |mut cx, (slot,): (u32,)| {
        cx.data_mut().calls.push(Call::Release(slot));
        Ok(())
    })?;
    host.func_wrap("dim", |mut cx, (slot, axis): (u32, u32)| {
        cx.data_mut().calls.push(Call::Dim(slot, axis));
        Ok((slot.wrapping_mul(10).wrapping_add(axis),))
    })?;
    host.func_wrap("read-i64", |mut cx, (slot, index): (u32, u32)| {
        let m = cx.data_mut();
        m.calls.push(Call::ReadI64(slot, index));
        Ok((m.values.get(&slot).copied().unwrap_or(0),))
    })?;
    host.func_wrap("read-f64", |mut cx, (slot, index): (u32, u32)| {
        cx.data_mut().calls.push(Call::ReadF64(slot, index));
        Ok((0.0f64,))
    })?;
    Ok(linker)
}

/// An instantiated wrapper and its mock host.
pub struct Wrapper {
    pub store: Store<Mock>,
    pub instance: Instance,
}

impl Wrapper {
    /// Instantiates `component` with a default mock host.
    pub fn new(component: &[u8]) -> Result<Wrapper> {
        Wrapper::with(component, Mock::default())
    }

    pub fn with(component: &[u8], mock: Mock) -> Result<Wrapper> {
        let component = Component::new(engine(), component)?;
        let mut store = Store::new(engine(), mock);
        store.limiter(|m| &mut m.limits);
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker()?.instantiate(&mut store, &component)?;
        Ok(Wrapper { store, instance })
    }

    pub fn init(&mut self, globals: &[u32], buffers: &[u32]) -> Result<()> {
        let f = self
            .instance
            .get_typed_func::<(&[u32], &[u32]), ()>(&mut self.store, "init")?;
        f.call(&mut self.store, (globals, buffers))
    }

    pub fn run(&mut self, inputs: &[u32]) -> Result<Result<Vec<u32>, u32>> {
        let f = self
            .instance
            .get_typed_func::<(&[u32],), (Result<Vec<u32>, u32>,)>(&mut self.store, "run")?;
        Ok(f.call(&mut self.store, (inputs,))?.0)
    }

    /// The calls recorded so far, and forgets them.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.store.data_mut().calls)
    }
}

/// The names of a component's imports.
pub fn component_imports(component: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        if let wasmparser::Payload::ComponentImportSection(section) = payload? {
            for import in section {
                names.push(import?.name.name.to_owned());
            }
        }
    }
    Ok(names)
}

/// Validates a component with every feature wasmtime enables by default.
pub fn validate(component: &[u8]) -> Result<()> {
    wasmparser::Validator::new().validate_all(component)?;
    Ok(())
}

/// Instantiates `component` with the epoch deadline `ticks` from now.
pub fn instantiate_with_deadline(component: &[u8], ticks: u64) -> Result<Wrapper> {
    let component = Component::new(engine(), component)?;
    let mut store = Store::new(engine(), Mock::default());
    store.limiter(|m| &mut m.limits);
    store.set_epoch_deadline(ticks);
    let instance = linker()?.instantiate(&mut store, &component)?;
    Ok(Wrapper { store, instance })
}
