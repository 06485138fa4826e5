//! What one call's `Store` may take: linear memory summed over all of the plugin's memories,
//! and how many core instances, memories and tables it may create.
//!
//! wasmtime's own `StoreLimits` caps each memory on its own, so a component with many core
//! instances, each with a memory, could commit its `memory_mb` many times over. The sum is
//! what the operator means by a plugin's memory cap, so the sum is what is held.
//!
//! Must never: let a store's memories together pass the plugin's cap, or let a failed grow
//! go unnoticed (it traps at once, with the reason).

use wasmtime::ResourceLimiter;

/// Core instances one component may create: a Rust component has three real modules (the
/// program, its WASI adapter and a shim); a JavaScript one a few more. The pooling allocator is
/// sized from the same numbers (`PluginRuntime::new`), so one component cannot take the slots
/// of others.
pub(super) const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
/// Memories one component may create.
pub(super) const MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables one component may create.
pub(super) const TABLES_PER_COMPONENT: u32 = 4;
/// Elements one table may grow to: far above what compiled code's function tables need.
const TABLE_ELEMENTS: usize = 100_000;

/// The limiter of one call's store.
#[derive(Debug)]
pub struct CallLimiter {
    /// The plugin's memory cap, over all its memories.
    memory_cap: usize,
    /// Bytes the store's memories hold now.
    committed: usize,
}

impl CallLimiter {
    /// A limiter holding the store's memories to `memory_cap` bytes in total.
    pub fn new(memory_cap: usize) -> Self {
        Self {
            memory_cap,
            committed: 0,
        }
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for a memory's initial size too (`current` 0), so the sum covers every memory
        // from its creation.
        let total = self
            .committed
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.memory_cap {
            // An error here traps the guest at once with this reason, as `trap_on_grow_failure`
            // does, rather than leaving its allocator to abort with a vaguer one.
            return Err(wasmtime::format_err!(
                "forcing trap when growing memory to {desired} bytes: the plugin's memories would hold {total} bytes, over its cap of {} bytes",
                self.memory_cap
            ));
        }
        self.committed = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > TABLE_ELEMENTS {
            return Err(wasmtime::format_err!(
                "forcing trap when growing a table to {desired} elements, over {TABLE_ELEMENTS}"
            ));
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error)
    }

    fn instances(&self) -> usize {
        CORE_INSTANCES_PER_COMPONENT as usize
    }

    fn tables(&self) -> usize {
        TABLES_PER_COMPONENT as usize
    }

    fn memories(&self) -> usize {
        MEMORIES_PER_COMPONENT as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_over_all_memories_together() {
        let mut limiter = CallLimiter::new(10 << 20);
        // Two memories of 4 MiB each fit; a third does not.
        assert!(limiter.memory_growing(0, 4 << 20, None).is_ok());
        assert!(limiter.memory_growing(0, 4 << 20, None).is_ok());
        assert!(limiter.memory_growing(0, 4 << 20, None).is_err());
        // Growing one of them by 2 MiB fits exactly.
        assert!(limiter.memory_growing(4 << 20, 6 << 20, None).is_ok());
        assert!(limiter.memory_growing(6 << 20, 6 << 20 | 1, None).is_err());
    }
}
