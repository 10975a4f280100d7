//! Compiling apps: in parallel across apps, once per distinct `.wasm`, and
//! within a time limit.
//!
//! A cranelift compile cannot be interrupted. [`Compiler::compile`] runs it
//! on a thread of its own and waits at most `max_time` for it; past that the
//! app is refused, and the thread runs to its end in the background, still
//! holding its compile slot, and its result is dropped. Slots are what
//! bound the threads: there are never more than `slots` compiles running,
//! finished or abandoned, so a tenant whose app compiles forever costs at
//! most its slots' worth of cores, not an unbounded number of threads.

use crate::sweep::SweepWhenDoubled;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Why a compile produced no component.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The compiler refused the bytes.
    #[error("{0}")]
    Invalid(String),
    /// The compile ran past `--max-compile-time`.
    #[error("compiling took longer than --max-compile-time ({0:?}); the compile runs on in the background and its result is discarded")]
    TooSlow(Duration),
    /// Every compile slot stayed taken (by compiles still running, or past
    /// their limit and running to their end) for `--max-compile-time`.
    #[error(
        "every one of the {slots} compile slots (--load-parallelism) stayed busy for {waited:?}"
    )]
    NoSlot {
        /// How many slots there are.
        slots: usize,
        /// How long the compile waited for one.
        waited: Duration,
    },
    /// The compiler thread could not start or panicked.
    #[error("the compiler thread failed: {0}")]
    Thread(String),
}

/// Runs compiles on threads of their own, at most `slots` at once, each
/// waited for at most `max_time`.
pub(crate) struct Compiler {
    slots: Arc<Slots>,
    max_time: Duration,
}

impl Compiler {
    /// A compiler with `slots` parallel compiles (at least 1).
    pub(crate) fn new(slots: usize, max_time: Duration) -> Self {
        Compiler {
            slots: Arc::new(Slots::new(slots.max(1))),
            max_time,
        }
    }

    /// Compiles `wasm`. Blocking: call it off the async workers.
    pub(crate) fn compile(&self, engine: &Engine, wasm: &[u8]) -> Result<Component, CompileError> {
        let (engine, wasm) = (engine.clone(), wasm.to_vec());
        self.run(move || {
            Component::from_binary(&engine, &wasm)
                .map_err(|e| CompileError::Invalid(format!("{e:#}")))
        })
    }

    /// Runs `job` on a thread of its own, in a slot, and waits at most
    /// `max_time` for it.
    fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, CompileError> + Send + 'static,
    ) -> Result<T, CompileError> {
        let slot = self
            .slots
            .acquire(self.max_time)
            .ok_or(CompileError::NoSlot {
                slots: self.slots.capacity,
                waited: self.max_time,
            })?;
        let (done, result) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("meshd-compile".into())
            .spawn(move || {
                // Held until the job really ends, even after the caller
                // stopped waiting for it.
                let _slot = slot;
                // The caller may have given up: nobody to tell then.
                let _ = done.send(job());
            })
            .map_err(|e| CompileError::Thread(e.to_string()))?;
        match result.recv_timeout(self.max_time) {
            Ok(compiled) => compiled,
            Err(RecvTimeoutError::Timeout) => Err(CompileError::TooSlow(self.max_time)),
            Err(RecvTimeoutError::Disconnected) => Err(CompileError::Thread("it panicked".into())),
        }
    }
}

/// A counting semaphore for blocking code.
struct Slots {
    capacity: usize,
    taken: Mutex<usize>,
    freed: Condvar,
}

/// One taken slot, given back on drop.
struct Slot(Arc<Slots>);

impl Slots {
    fn new(capacity: usize) -> Self {
        Slots {
            capacity,
            taken: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Takes a slot, waiting at most `patience` for one.
    fn acquire(self: &Arc<Self>, patience: Duration) -> Option<Slot> {
        let deadline = Instant::now().checked_add(patience);
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        while *taken >= self.capacity {
            let now = Instant::now();
            let left = deadline?.checked_duration_since(now)?;
            taken = self
                .freed
                .wait_timeout(taken, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *taken += 1;
        Some(Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.0.taken.lock().unwrap_or_else(PoisonError::into_inner);
        *taken -= 1;
        self.0.freed.notify_one();
    }
}

/// Values shared by key while anyone holds them, made at most once at a
/// time per key: loads of the same bytes wait for one another and share the
/// result, loads of different bytes run in parallel.
pub(crate) struct SharedByKey<K, V> {
    entries: Mutex<Entries<K, V>>,
}

struct Entries<K, V> {
    by_key: HashMap<K, Arc<Mutex<Weak<V>>>>,
    /// Keys whose value is gone are forgotten when the map has doubled:
    /// sweeping at every call cost a pass over every key per load (with
    /// 10,000 apps loading on first use, 14% of the CPU of a pass over them).
    sweep: SweepWhenDoubled,
}

impl<K: Hash + Eq + Clone, V> Default for SharedByKey<K, V> {
    fn default() -> Self {
        SharedByKey {
            entries: Mutex::new(Entries {
                by_key: HashMap::new(),
                sweep: SweepWhenDoubled::default(),
            }),
        }
    }
}

impl<K: Hash + Eq + Clone, V> SharedByKey<K, V> {
    /// The live value of `key`, with `true`; or a new one from `make`, with
    /// `false`. `make` runs with only this key's lock held.
    pub(crate) fn get_or_make<E>(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<(Arc<V>, bool), E> {
        let entry = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if entries.sweep.is_due(entries.by_key.len()) {
                // Forget keys whose value is gone and that nobody is making.
                entries.by_key.retain(|_, entry| {
                    Arc::strong_count(entry) > 1
                        || match entry.try_lock() {
                            Ok(weak) => weak.strong_count() > 0,
                            Err(_) => true,
                        }
                });
                let left = entries.by_key.len();
                entries.sweep.swept(left);
            }
            entries.by_key.entry(key.clone()).or_default().clone()
        };
        let mut weak = entry.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = weak.upgrade() {
            return Ok((value, true));
        }
        let value = Arc::new(make()?);
        *weak = Arc::downgrade(&value);
        Ok((value, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    /// Deadlock guard only: these tests never depend on speed.
    const PATIENCE: Duration = Duration::from_secs(30);

    #[test]
    fn one_slow_key_does_not_block_another() {
        let shared = Arc::new(SharedByKey::<u32, &'static str>::default());
        let (release_slow, slow_may_finish) = channel::<()>();
        let (slow_started, started) = channel::<()>();
        let slow = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                shared.get_or_make(&1, || {
                    slow_started.send(()).unwrap();
                    slow_may_finish.recv_timeout(PATIENCE).unwrap();
                    Ok::<_, ()>("slow")
                })
            })
        };
        started.recv_timeout(PATIENCE).unwrap();
        // Key 1 is being made; key 2 is made meanwhile (a global lock would
        // deadlock here, and the guard below would fail the test).
        let (fast_done, fast) = channel();
        {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let made = shared.get_or_make(&2, || Ok::<_, ()>("fast"));
                fast_done
                    .send(made.map(|(v, shared)| (*v, shared)))
                    .unwrap();
            });
        }
        assert_eq!(fast.recv_timeout(PATIENCE).unwrap(), Ok(("fast", false)));
        release_slow.send(()).unwrap();
        let (value, was_shared) = slow.join().unwrap().unwrap();
        assert_eq!((*value, was_shared), ("slow", false));
        // Same key while alive: shared, not made again.
        let (again, was_shared) = shared
            .get_or_make(&1, || Err::<&str, _>("must not be made twice"))
            .unwrap();
        assert!(was_shared && Arc::ptr_eq(&again, &value));
    }

    #[test]
    fn slots_bound_running_work_and_come_back() {
        let slots = Arc::new(Slots::new(2));
        let a = slots.acquire(Duration::ZERO).expect("first slot");
        let _b = slots.acquire(Duration::ZERO).expect("second slot");
        assert!(slots.acquire(Duration::ZERO).is_none(), "only two");
        drop(a);
        assert!(
            slots.acquire(Duration::ZERO).is_some(),
            "a freed slot is reusable"
        );
    }

    #[test]
    fn a_compile_past_its_limit_is_refused_and_keeps_its_slot_until_it_ends() {
        let compiler = Compiler::new(1, Duration::from_millis(1));
        let (finish, may_finish) = channel::<()>();
        // A job that cannot end before the test lets it.
        let err = compiler
            .run(move || {
                may_finish.recv_timeout(PATIENCE).ok();
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, CompileError::TooSlow(_)), "{err}");
        // Its thread still runs and holds the only slot: the next compile
        // waits for it, up to the limit, and is refused.
        let err = compiler.run(|| Ok(())).unwrap_err();
        assert!(
            matches!(err, CompileError::NoSlot { slots: 1, .. }),
            "{err}"
        );
        // Once it ends, its slot comes back.
        finish.send(()).unwrap();
        assert!(
            compiler.slots.acquire(PATIENCE).is_some(),
            "the slot came back"
        );
    }

    #[test]
    fn keys_whose_values_are_gone_are_forgotten_as_keys_come_and_go() {
        let shared = SharedByKey::<u32, u32>::default();
        let kept: Vec<Arc<u32>> = (0..100)
            .map(|k| shared.get_or_make(&k, || Ok::<_, ()>(k)).unwrap().0)
            .collect();
        for k in 100..10_000 {
            let (value, shared_before) = shared.get_or_make(&k, || Ok::<_, ()>(k)).unwrap();
            assert!(!shared_before);
            drop(value);
        }
        let size = shared.entries.lock().unwrap().by_key.len();
        assert!(
            size <= 2 * kept.len() + crate::sweep::MIN_SWEEP_AT,
            "{size} keys"
        );
        // A value still held is found, not made again.
        let (again, found) = shared.get_or_make(&7, || Ok::<_, ()>(0)).unwrap();
        assert!(found && Arc::ptr_eq(&again, &kept[7]));
    }
}
