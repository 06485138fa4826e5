//! A component's linear memory as its toolchain laid it out: whether a core module puts its
//! stack first, and how big that stack is. `switchboard plugin check` reports it, and the host
//! warns when it loads a component whose stack is too large, because the pool keeps only the
//! first `memory_keep_resident_kib` of an instance's memory resident between calls: a stack
//! placed first (rustc's layout) that fills that span pushes the heap past it, and every call
//! then faults its heap in again (docs/PLUGINS.md, "Limits and capabilities").
//!
//! Reads only, and never refuses a component: a large stack costs speed, not safety.

use wasmparser::{DataKind, Encoding, Operator, Parser, Payload, ValType};

/// What one core module's globals and data say about its stack.
#[derive(Default)]
struct CoreModule {
    /// The initial value of the first global, when it is a mutable `i32` set by a constant:
    /// where LLVM's `__stack_pointer` lives, and with the stack first, the stack's size.
    stack_pointer: Option<u64>,
    /// The lowest offset of an active data segment in memory 0.
    lowest_data: Option<u64>,
}

impl CoreModule {
    /// The stack's size, when the stack comes first: it starts at address 0 and grows down
    /// from the stack pointer, so all data lies at or above where the pointer starts.
    fn stack_first_bytes(&self) -> Option<u64> {
        let top = self.stack_pointer.filter(|&top| top > 0)?;
        self.lowest_data
            .is_none_or(|data| data >= top)
            .then_some(top)
    }
}

/// The size in bytes of the largest stack that a core module of `component` puts first in
/// its linear memory; `None` when none is laid out that way (or the bytes do not parse: loading
/// them is what reports that).
pub fn stack_first_bytes(component: &[u8]) -> Option<u64> {
    let mut modules: Vec<CoreModule> = Vec::new();
    // The core module being read, if any: a component's modules are read one after another.
    let mut open: Option<CoreModule> = None;
    for payload in Parser::new(0).parse_all(component) {
        match payload.ok()? {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } => open = Some(CoreModule::default()),
            Payload::GlobalSection(globals) => {
                let (Some(module), Some(Ok(first))) = (open.as_mut(), globals.into_iter().next())
                else {
                    continue;
                };
                if first.ty.content_type == ValType::I32 && first.ty.mutable {
                    module.stack_pointer = constant(first.init_expr.get_operators_reader());
                }
            }
            Payload::DataSection(segments) => {
                let Some(module) = open.as_mut() else {
                    continue;
                };
                for segment in segments.into_iter().flatten() {
                    if let DataKind::Active {
                        memory_index: 0,
                        offset_expr,
                    } = segment.kind
                        && let Some(offset) = constant(offset_expr.get_operators_reader())
                    {
                        module.lowest_data =
                            Some(module.lowest_data.map_or(offset, |o| o.min(offset)));
                    }
                }
            }
            Payload::End(_) => modules.extend(open.take()),
            _ => {}
        }
    }
    modules
        .iter()
        .filter_map(CoreModule::stack_first_bytes)
        .max()
}

/// What `plugin check` says of a stack of `stack_bytes` placed first, when the host keeps
/// `keep_resident_bytes` of an instance's memory resident: a warning when the stack fills that
/// span, as the heap then lies past it.
pub fn stack_warning(stack_bytes: u64, keep_resident_bytes: u64) -> Option<String> {
    (stack_bytes >= keep_resident_bytes).then(|| {
        format!(
            "the stack fills the {} KiB the host keeps resident between calls \
             (runtime.memory_keep_resident_kib), so the heap lies past it and every call faults \
             it in again; link a Rust adapter with a smaller stack, \
             -C link-arg=-zstack-size=262144 (docs/PLUGINS.md, \"Limits and capabilities\")",
            keep_resident_bytes / 1024
        )
    })
}

/// The value of a constant expression that is a single `i32.const`.
fn constant(mut expr: wasmparser::OperatorsReader<'_>) -> Option<u64> {
    match expr.read().ok()? {
        // Addresses are unsigned: an `i32.const` of -1 is the top of a 4 GiB memory.
        Operator::I32Const { value } => Some(u64::from(value.cast_unsigned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        Component, ConstExpr, DataSection, GlobalSection, GlobalType, MemorySection, MemoryType,
        Module, ModuleSection,
    };

    /// A component around one core module with a stack pointer starting at `stack_top` and one
    /// data segment at `data_at`.
    fn component(stack_top: i32, data_at: i32) -> Vec<u8> {
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 20,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut globals = GlobalSection::new();
        let mutable_i32 = GlobalType {
            val_type: wasm_encoder::ValType::I32,
            mutable: true,
            shared: false,
        };
        globals.global(mutable_i32, &ConstExpr::i32_const(stack_top));
        let mut data = DataSection::new();
        data.active(0, &ConstExpr::i32_const(data_at), b"data".iter().copied());
        let mut module = Module::new();
        module.section(&memories).section(&globals).section(&data);
        let mut component = Component::new();
        component.section(&ModuleSection(&module));
        component.finish()
    }

    #[test]
    fn a_stack_placed_first_is_measured_by_where_its_pointer_starts() {
        assert_eq!(
            stack_first_bytes(&component(1 << 20, 1 << 20)),
            Some(1 << 20),
            "rustc's default: 1 MiB of stack, data right above it"
        );
        assert_eq!(
            stack_first_bytes(&component(256 << 10, (256 << 10) + 16)),
            Some(256 << 10)
        );
    }

    #[test]
    fn a_stack_above_the_data_is_not_reported() {
        // Data first, then the stack: the pointer starts above the data.
        assert_eq!(stack_first_bytes(&component(1 << 20, 1024)), None);
        assert_eq!(stack_first_bytes(b"not a component"), None);
    }

    #[test]
    fn only_a_stack_that_fills_the_resident_span_is_warned_of() -> anyhow::Result<()> {
        let warning = stack_warning(1 << 20, 1 << 20)
            .ok_or_else(|| anyhow::anyhow!("rustc's 1 MiB fills 1 MiB, yet no warning"))?;
        assert!(warning.contains("1024 KiB"), "{warning}");
        assert!(warning.contains("-zstack-size=262144"), "{warning}");
        assert_eq!(stack_warning(256 << 10, 1 << 20), None);
        Ok(())
    }

    #[test]
    fn the_bundled_fcm_adapter_links_with_the_small_stack() -> anyhow::Result<()> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../build/plugins/fcm.wasm");
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("{path} (`make plugins` builds it): {e}"))?;
        assert_eq!(stack_first_bytes(&bytes), Some(256 << 10));
        Ok(())
    }
}
