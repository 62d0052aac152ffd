//! The wasmtime side: engines (pooling allocator, epoch interruption; one per
//! wasm stack size in use, as the stack limit is per engine), each with one
//! epoch ticker and one linker with every import a plugin may use, and
//! validation + compilation of uploaded components into `PluginPre`s, backed
//! by an in-memory and an on-disk cache of compiled code keyed by content hash.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::engine::capabilities::PluginCtx;
use crate::engine::contract::PluginPre;

/// How often the engine's epoch advances; deadlines are checked at this grain.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// The largest component accepted for compilation.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;
/// The longest a component may take to compile, wall-clock, in the server.
pub const MAX_COMPILE_TIME: Duration = Duration::from_secs(60);
/// The same for author tools (`dev`, `plugin test`): an author's machine is
/// busy building while it compiles, so wall-clock time runs longer there.
pub const AUTHOR_COMPILE_TIME: Duration = Duration::from_secs(300);
/// Wasm stack of a plugin whose limits name none.
pub const DEFAULT_WASM_STACK: usize = (crate::config::Limit::StackKb.spec().default as usize) << 10;

/// Why a `.wasm` file was not loaded. Each message says precisely what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (bad magic number)")]
    Garbage,
    /// A core module rather than a component.
    #[error("a core WebAssembly module, not a component; build for wasm32-wasip2 or run `wasm-tools component new`")]
    CoreModule,
    /// Larger than [`MAX_COMPONENT_BYTES`].
    #[error("component is {0} bytes, over the {MAX_COMPONENT_BYTES}-byte limit")]
    TooLarge(usize),
    /// Cranelift or the validator rejected it.
    #[error("does not compile: {0:#}")]
    Compile(wasmtime::Error),
    /// Compiling took longer than [`MAX_COMPILE_TIME`].
    #[error("compiling took longer than {0} s; the component is too large or too complex")]
    CompileTimeout(u64),
    /// It imports something the host does not provide.
    #[error("imports what Switchboard does not provide: {0:#}")]
    Imports(wasmtime::Error),
    /// It does not export the `switchboard:plugin/plugin` world.
    #[error("does not implement world switchboard:plugin/plugin@0.2.0 (nor 0.1.0): {0:#}")]
    WrongWorld(wasmtime::Error),
}

/// Sizing of the instance pool and where compiled code is cached.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// How many plugin instances may be alive at once.
    pub max_instances: u32,
    /// Folder for the on-disk compiled-code cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// The longest a component may take to compile.
    pub compile_limit: Duration,
}

/// Counters of how components were obtained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CompileStats {
    /// Compiled by Cranelift.
    pub compiles: u64,
    /// Loaded from the on-disk cache.
    pub disk_hits: u64,
    /// Reused from memory (an identical file loaded before).
    pub memory_hits: u64,
    /// Disk entries found corrupt and replaced.
    pub corrupt_entries: u64,
}

/// One engine (wasmtime's stack limit is per engine) with its linker, epoch
/// ticker and caches of compiled code.
struct EngineSet {
    engine: Engine,
    linker: Linker<PluginCtx>,
    compiled: Mutex<HashMap<String, Component>>,
    disk: Option<crate::engine::cache::DiskCache>,
    ticker: Option<EpochTicker>,
}

impl Drop for EngineSet {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.stop();
        }
    }
}

/// The engines (one per wasm stack size in use, created on demand), their
/// linkers, epoch tickers and caches of compiled components.
pub struct Runtime {
    default: Arc<EngineSet>,
    by_stack: Mutex<HashMap<usize, Arc<EngineSet>>>,
    opts: RuntimeOptions,
    stats: [AtomicU64; 4],
    pooling: bool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("pooling", &self.pooling).finish()
    }
}

fn base_config(stack: usize) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(stack);
    config
}

impl EngineSet {
    fn new(opts: &RuntimeOptions, stack: usize) -> anyhow::Result<(EngineSet, bool)> {
        let n = opts.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .max_core_instances_per_component(64)
            .total_memories(n * 2)
            .total_tables(n * 8)
            .total_stacks(n)
            .max_memory_size(crate::config::Limits::max_memory_bytes())
            .table_elements(crate::config::Limits::max_table_elements())
            .max_core_instance_size(8 << 20)
            .max_component_instance_size(8 << 20)
            // Freed memory goes back to the OS as each instance ends, so RSS
            // after a burst returns to its idle level.
            .decommit_batch_size(1);
        let mut config = base_config(stack);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let (engine, pooling) = match Engine::new(&config) {
            Ok(e) => (e, true),
            Err(e) => {
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating instances on demand");
                (Engine::new(&base_config(stack))?, false)
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        crate::engine::contract::add_to_linker(&mut linker)?;
        let ticker = Some(EpochTicker::start(engine.clone()));
        let disk = match &opts.cache_dir {
            Some(dir) => Some(crate::engine::cache::DiskCache::open(dir, &engine)?),
            None => None,
        };
        Ok((
            EngineSet {
                engine,
                linker,
                compiled: Mutex::new(HashMap::new()),
                disk,
                ticker,
            },
            pooling,
        ))
    }
}

impl Runtime {
    /// Builds the default engine (pooling allocator if the machine allows
    /// it) and its linker, and starts its epoch ticker.
    pub fn new(opts: RuntimeOptions) -> anyhow::Result<Runtime> {
        let (default, pooling) = EngineSet::new(&opts, DEFAULT_WASM_STACK)?;
        Ok(Runtime {
            default: Arc::new(default),
            by_stack: Mutex::new(HashMap::new()),
            opts,
            stats: Default::default(),
            pooling,
        })
    }

    /// The default engine.
    pub fn engine(&self) -> &Engine {
        &self.default.engine
    }

    /// The engine set for a wasm stack size, created on first use.
    fn set_for(&self, stack: usize) -> Result<Arc<EngineSet>, LoadError> {
        if stack == DEFAULT_WASM_STACK {
            return Ok(self.default.clone());
        }
        let mut sets = crate::sync::lock(&self.by_stack);
        if let Some(set) = sets.get(&stack) {
            return Ok(set.clone());
        }
        let (set, _) = EngineSet::new(&self.opts, stack).map_err(|e| {
            LoadError::Compile(wasmtime::Error::msg(format!(
                "cannot build an engine with a {} KiB stack: {e:#}",
                stack >> 10
            )))
        })?;
        tracing::info!(stack_kib = stack >> 10, "engine created for a wasm stack size");
        let set = Arc::new(set);
        sets.insert(stack, set.clone());
        Ok(set)
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Hex SHA-256 of a component's bytes: its version identity.
    pub fn content_hash(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// How components were obtained so far.
    pub fn stats(&self) -> CompileStats {
        let [c, d, m, x] = &self.stats;
        CompileStats {
            compiles: c.load(Ordering::Relaxed),
            disk_hits: d.load(Ordering::Relaxed),
            memory_hits: m.load(Ordering::Relaxed),
            corrupt_entries: x.load(Ordering::Relaxed),
        }
    }

    fn count(&self, i: usize) {
        self.stats[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The compiled component for these bytes: from memory, else from the disk
    /// cache (verified), else compiled now and written to the disk cache.
    fn component(&self, set: &EngineSet, bytes: &[u8], hash: &str) -> Result<Component, LoadError> {
        if let Some(c) = crate::sync::lock(&set.compiled).get(hash).cloned() {
            self.count(2);
            return Ok(c);
        }
        let from_disk = set.disk.as_ref().and_then(|d| match d.get(&set.engine, hash) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(hash = %&hash[..12], error = %e, "discarding corrupt compiled-code cache entry; recompiling");
                self.count(3);
                None
            }
        });
        let component = match from_disk {
            Some(c) => {
                self.count(1);
                tracing::debug!(hash = %&hash[..12], "loaded compiled component from cache");
                c
            }
            None => {
                let started = Instant::now();
                let c = compile_bounded(&set.engine, bytes, self.opts.compile_limit)?;
                self.count(0);
                tracing::info!(hash = %&hash[..12], ms = started.elapsed().as_millis() as u64, "compiled component");
                if let Some(d) = &set.disk
                    && let Err(e) = d.put(hash, &c)
                {
                    tracing::warn!(error = %e, "cannot write the compiled-code cache");
                }
                c
            }
        };
        crate::sync::lock(&set.compiled).insert(hash.to_string(), component.clone());
        Ok(component)
    }

    /// Forgets in-memory compiled code no loaded plugin uses any more.
    pub fn retain_compiled(&self, live: &std::collections::HashSet<String>) {
        let extra: Vec<Arc<EngineSet>> = crate::sync::lock(&self.by_stack).values().cloned().collect();
        for set in std::iter::once(&self.default).chain(extra.iter()) {
            crate::sync::lock(&set.compiled).retain(|h, _| live.contains(h));
        }
    }

    /// Validates and compiles a component whose [`Runtime::content_hash`] is
    /// `hash` (reusing the compiled code of an identical file loaded before)
    /// and pre-instantiates it against the linker.
    pub fn load(&self, bytes: &[u8], hash: &str) -> Result<PluginPre, LoadError> {
        self.load_with_stack(bytes, hash, DEFAULT_WASM_STACK).map(|p| p.pre)
    }

    /// Checks the header and compiles (or takes from the caches) on the
    /// default engine, without linking: what `plugin check` inspects before
    /// [`Runtime::load`] reuses the result.
    pub fn compile(&self, bytes: &[u8], hash: &str) -> Result<Component, LoadError> {
        check_header(bytes)?;
        self.component(&self.default, bytes, hash)
    }

    /// Like [`Runtime::load`], on the engine whose wasm stack is `stack`
    /// bytes; also gives that engine's epoch ticker, which must run while
    /// the component does.
    pub fn load_with_stack(&self, bytes: &[u8], hash: &str, stack: usize) -> Result<Prepared, LoadError> {
        check_header(bytes)?;
        let set = self.set_for(stack)?;
        let component = self.component(&set, bytes, hash)?;
        let instance_pre = set.linker.instantiate_pre(&component).map_err(LoadError::Imports)?;
        let pre = PluginPre::new(instance_pre).map_err(LoadError::WrongWorld)?;
        let ticker = set.ticker.as_ref().expect("a live engine set has its ticker").handle();
        Ok(Prepared { pre, ticker })
    }
}

/// A component ready to run: pre-instantiated on its engine, with that
/// engine's epoch ticker.
pub struct Prepared {
    /// Ready for a fresh instance per event.
    pub pre: PluginPre,
    /// The engine's ticker.
    pub ticker: TickerHandle,
}

/// Compiles on a separate thread and gives up after `limit`, so a compile
/// bomb cannot stall a reload. (The abandoned thread finishes in the
/// background; its result is dropped.)
fn compile_bounded(engine: &Engine, bytes: &[u8], limit: Duration) -> Result<Component, LoadError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (engine, bytes) = (engine.clone(), bytes.to_vec());
    std::thread::Builder::new()
        .name("switchboard-compile".into())
        .spawn(move || {
            let _ = tx.send(Component::new(&engine, &bytes));
        })
        .map_err(|e| LoadError::Compile(wasmtime::Error::msg(format!("cannot start a compile thread: {e}"))))?;
    match rx.recv_timeout(limit) {
        Ok(result) => result.map_err(LoadError::Compile),
        Err(_) => Err(LoadError::CompileTimeout(limit.as_secs())),
    }
}

/// Classifies a file by its header: garbage, a core module, too large, or
/// (`Ok`) a component.
pub fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(LoadError::TooLarge(bytes.len()));
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::Garbage);
    }
    // Bytes 4..8 are the version and layer: 1,0 / 0,0 for a core module and
    // 0x0d,0 / 1,0 for a component.
    match bytes[6..8] {
        [0, 0] => Err(LoadError::CoreModule),
        [1, 0] => Ok(()),
        _ => Err(LoadError::Garbage),
    }
}

/// How long a ticker keeps ticking after the last invocation ends before it
/// parks, so a busy host does not pay a wake-up per event.
const TICKER_LINGER: Duration = Duration::from_millis(50);

/// One thread per engine that advances the epoch every [`EPOCH_TICK`] while
/// any invocation on the engine is running (and [`TICKER_LINGER`] after), and
/// sleeps otherwise (an idle host spends no CPU on ticks).
struct EpochTicker {
    shared: Arc<TickerShared>,
    thread: JoinHandle<()>,
}

#[derive(Debug)]
struct TickerShared {
    running: AtomicUsize,
    stop: AtomicBool,
    ticks: AtomicU64,
    thread: OnceLock<std::thread::Thread>,
}

/// An engine's epoch ticker, as the dispatcher sees it: each invocation
/// holds a [`Running`] so the epoch advances while it runs.
#[derive(Debug, Clone)]
pub struct TickerHandle(Arc<TickerShared>);

impl TickerHandle {
    /// Keeps the epoch advancing until the guard drops. Take it before the
    /// instance runs any wasm: without ticks there are no deadline checks.
    pub fn running(&self) -> Running {
        if self.0.running.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(t) = self.0.thread.get()
        {
            t.unpark();
        }
        Running(self.0.clone())
    }

    /// Ticks so far (for tests and diagnostics).
    pub fn ticks(&self) -> u64 {
        self.0.ticks.load(Ordering::Relaxed)
    }
}

/// One running invocation, counted by its engine's ticker.
#[derive(Debug)]
pub struct Running(Arc<TickerShared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let shared = Arc::new(TickerShared {
            running: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("switchboard-epoch".into())
            .spawn(move || {
                let mut last_busy: Option<Instant> = None;
                while !s.stop.load(Ordering::Acquire) {
                    if s.running.load(Ordering::Acquire) > 0 {
                        last_busy = Some(Instant::now());
                    } else if last_busy.is_none_or(|t| t.elapsed() >= TICKER_LINGER) {
                        // `running` unparks us; an unpark that lands before
                        // this park makes it return at once.
                        std::thread::park();
                        last_busy = None;
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    s.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("spawn epoch ticker");
        let _ = shared.thread.set(thread.thread().clone());
        EpochTicker { shared, thread }
    }

    fn handle(&self) -> TickerHandle {
        TickerHandle(self.shared.clone())
    }

    fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_classification() {
        assert!(matches!(check_header(b"hello world"), Err(LoadError::Garbage)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
        assert!(matches!(check_header(b"\0as"), Err(LoadError::Garbage)));
    }

    #[test]
    fn the_epoch_ticks_only_while_an_invocation_runs() {
        let rt = Runtime::new(RuntimeOptions {
            max_instances: 4,
            cache_dir: None,
            compile_limit: MAX_COMPILE_TIME,
        })
        .unwrap();
        let ticker = rt.default.ticker.as_ref().unwrap().handle();
        let idle = ticker.ticks();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ticker.ticks(), idle, "no ticks while idle");
        let running = ticker.running();
        std::thread::sleep(Duration::from_millis(50));
        let during = ticker.ticks();
        assert!(during >= idle + 10, "{idle} → {during}");
        drop(running);
        std::thread::sleep(TICKER_LINGER + Duration::from_millis(30));
        let after = ticker.ticks();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ticker.ticks(), after, "parked again once nothing runs");
    }
}
