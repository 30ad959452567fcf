//! Everything about getting a Linux kernel from files on the host to its first instruction:
//! memory layout, page tables, GDT, zero page, MP table, and the initial CPU state.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod params;
pub mod regs;
